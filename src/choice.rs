//! Settings that take one of a few names (`optimizer: adamw`, `sampler: ddim`): enums that
//! parse case-insensitively (ignoring `-`, `_` and spaces, so `fashion_mnist` is
//! `fashion-mnist`), accept aliases, and whose error names the value and every allowed one.
//! They serialise as their canonical name, so `config.yml` and checkpoints stay readable.

/// Folds a name for comparison: lowercase, without `-`, `_` and spaces.
pub fn fold(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '-' | '_' | ' ')).collect::<String>().to_lowercase()
}

/// `a`, `a or b`, `a, b or c`.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Declares a choice enum: `choice! { /// doc  pub enum Name { /// doc  Variant = "name" | "alias", .. } }`.
/// An optional `hint = path` names a `fn(&str) -> Option<String>` that explains a rejected
/// value better than the list of allowed ones (e.g. why `fp16` is not offered).
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),+ $(,)?
        }
        $(hint = $hint:path;)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The canonical names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($canon),+];

            /// The canonical name (what `config.yml` and checkpoints hold).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $canon ),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                let key = $crate::choice::fold(s);
                $(
                    if key == $crate::choice::fold($canon) $(|| key == $crate::choice::fold($alias))* {
                        return Ok(Self::$variant);
                    }
                )+
                $( if let Some(h) = $hint(&key) { return Err(format!("{s:?} is not supported: {h}")); } )?
                Err(format!("{s:?} is not allowed: use {}", $crate::choice::one_of(Self::NAMES)))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(<D::Error as serde::de::Error>::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::choice! {
        /// A test choice.
        pub enum Fruit {
            Apple = "apple",
            BloodOrange = "blood-orange" | "orange",
        }
        hint = no_kiwi;
    }

    fn no_kiwi(key: &str) -> Option<String> {
        (key == "kiwi").then(|| "kiwis are out of season".to_string())
    }

    #[test]
    fn parses_names_aliases_and_spellings() {
        assert_eq!("apple".parse::<Fruit>(), Ok(Fruit::Apple));
        assert_eq!("APPLE".parse::<Fruit>(), Ok(Fruit::Apple));
        assert_eq!("Blood_Orange".parse::<Fruit>(), Ok(Fruit::BloodOrange));
        assert_eq!("orange".parse::<Fruit>(), Ok(Fruit::BloodOrange));
        assert_eq!(Fruit::BloodOrange.to_string(), "blood-orange");
    }

    #[test]
    fn errors_list_the_allowed_names() {
        assert_eq!("pear".parse::<Fruit>().unwrap_err(), "\"pear\" is not allowed: use apple or blood-orange");
        assert_eq!("Kiwi".parse::<Fruit>().unwrap_err(), "\"Kiwi\" is not supported: kiwis are out of season");
        assert_eq!(super::one_of(&["a", "b", "c"]), "a, b or c");
    }

    #[test]
    fn serde_round_trip() {
        let y = serde_yaml::to_string(&Fruit::BloodOrange).unwrap();
        assert_eq!(y.trim(), "blood-orange");
        assert_eq!(serde_yaml::from_str::<Fruit>("Orange").unwrap(), Fruit::BloodOrange);
        assert!(serde_yaml::from_str::<Fruit>("pear").unwrap_err().to_string().contains("apple or blood-orange"));
    }
}
