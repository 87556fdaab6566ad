//! The YAML tree of a config before it is typed: tags stripped, `--set` paths applied, keys
//! checked against the defaults' with the nearest valid one named, type errors made readable,
//! and nesting bounded before the parser sees the text.

use serde_yaml::Value;

/// Removes YAML tags (`!!float 1e-3` -> `1e-3`), so tagged values parse like plain ones.
pub(super) fn strip_tags(v: &mut Value) {
    match v {
        Value::Tagged(t) => {
            let inner = std::mem::replace(&mut t.value, Value::Null);
            let tag = t.tag.to_string();
            *v = match (tag.trim_start_matches('!'), inner) {
                ("float", Value::String(s)) => s.parse::<f64>().map(Value::from).unwrap_or(Value::String(s)),
                ("int", Value::String(s)) => s.parse::<i64>().map(Value::from).unwrap_or(Value::String(s)),
                (_, other) => other,
            };
            strip_tags(v);
        }
        Value::Mapping(m) => m.values_mut().for_each(strip_tags),
        Value::Sequence(s) => s.iter_mut().for_each(strip_tags),
        _ => {}
    }
}

/// Applies `a.b.c=value` to the YAML tree; the value is parsed as YAML (so `2e-4`, `[8, 16]`,
/// `false` work).
pub(super) fn set_path(root: &mut Value, key: &str, raw: &str) -> Result<(), String> {
    check_nesting(raw)?;
    let parsed: Value = serde_yaml::from_str(raw).map_err(|e| format!("value is not YAML: {e}"))?;
    if !parsed.is_mapping() && ["dataset", "ddpm", "network", "train", "sample", "eval"].contains(&key) {
        return Err(format!(
            "{key} is a section of options.yml, not a value: set its keys one at a time (--set {key}.KEY=VALUE)"
        ));
    }
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node.as_mapping_mut().ok_or_else(|| format!("{} is not a section", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            map.insert(Value::from(*part), parsed);
            return Ok(());
        }
        node = map.entry(Value::from(*part)).or_insert_with(|| Value::Mapping(Default::default()));
    }
    Err("empty key".into())
}

/// Every key of `value` must exist in `schema` (the default config); a wrong one is named
/// with the closest valid key.
pub(super) fn check_keys(value: &Value, schema: &Value, prefix: &str) -> Result<(), String> {
    let (Some(map), Some(known)) = (value.as_mapping(), schema.as_mapping()) else {
        if schema.is_mapping() && !value.is_mapping() && !value.is_null() {
            return Err(format!("{} must be a section of keys, not {}", prefix.trim_end_matches('.'), short(value)));
        }
        return Ok(());
    };
    for (k, v) in map {
        let name = k.as_str().map(str::to_string).unwrap_or_else(|| short(k));
        match known.get(k) {
            Some(sub) => check_keys(v, sub, &format!("{prefix}{name}."))?,
            None => {
                let keys: Vec<&str> = known.keys().filter_map(Value::as_str).collect();
                let nearest = keys.iter().min_by_key(|c| edit_distance(&name, c)).copied().unwrap_or("");
                let section =
                    if prefix.is_empty() { "top level".to_string() } else { prefix.trim_end_matches('.').to_string() };
                return Err(format!(
                    "unknown key '{prefix}{name}' (did you mean '{prefix}{nearest}'?; valid keys in {section}: {})",
                    keys.join(", ")
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn short(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default().trim().to_string()
}

/// Turns serde_yaml's type errors into "key: got X, expected Y".
pub(super) fn describe_type_error(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    match msg.split_once(": invalid type: ") {
        Some((key, rest)) => {
            let rest = rest
                .replace("expected i64", "expected an integer")
                .replace("expected u64", "expected a non-negative integer")
                .replace("expected f64", "expected a number")
                .replace("expected usize", "expected a non-negative integer");
            format!("{key} has the wrong type: got {rest}")
        }
        None => msg.to_string(),
    }
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The deepest `[` / `{` nesting a config may have: options.yml nests three levels.
const MAX_FLOW_DEPTH: usize = 64;

/// Refuses YAML whose flow collections (`[...]`, `{...}`) nest deeper than
/// [`MAX_FLOW_DEPTH`] before the parser sees it: the parser takes minutes over a few hundred
/// thousand brackets before it gives up. Quoted strings and comments are skipped.
pub(super) fn check_nesting(text: &str) -> Result<(), String> {
    let (mut depth, mut quote, mut comment, mut prev) = (0usize, None::<char>, false, '\n');
    let mut line = 1;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
        }
        match (quote, comment, c) {
            (_, true, _) => {}
            (Some(q), _, c) if c == q => quote = None,
            (Some(_), _, _) => {}
            (None, _, '\'' | '"') => quote = Some(c),
            (None, _, '#') if prev.is_whitespace() => comment = true,
            (None, _, '[' | '{') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(format!(
                        "YAML nested deeper than {MAX_FLOW_DEPTH} levels of [ ] or {{ }} at line {line}: not a config"
                    ));
                }
            }
            (None, _, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}
