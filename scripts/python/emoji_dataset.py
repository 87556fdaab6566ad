"""Lays out the 64x64 emoji pictures of the npm packages emoji-datasource-google and
emoji-datasource-twitter as a ddpm folder data set: DEST/<category>/<vendor>-<image>.png, one
subfolder per category of the packages' emoji.json (so `network.num_classes: 10` conditions on
them), skin-tone variants included, and DEST/ATTRIBUTION.txt with the pictures' licences.

    python3 emoji_dataset.py DEST google.tgz twitter.tgz

Standard library only (setup.sh runs it before the venv may exist).
"""

import json
import os
import re
import sys
import tarfile

LICENCES = {
    "google": "Noto Emoji, Copyright Google Inc., Apache License 2.0 "
    "(https://github.com/googlefonts/noto-emoji/blob/main/LICENSE)",
    "twitter": "Twemoji, Copyright Twitter, Inc. and other contributors, CC-BY 4.0 "
    "(https://github.com/jdecked/twemoji/blob/main/LICENSE-GRAPHICS)",
}


def slug(category):
    """'Smileys & Emotion' -> 'smileys-emotion'."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")


def categories(entries):
    """Each picture's file name -> its category slug (a skin-tone variant takes its base's)."""
    out = {}
    for e in entries:
        cat = slug(e["category"])
        out[e["image"]] = cat
        for v in (e.get("skin_variations") or {}).values():
            out[v["image"]] = cat
    return out


def unpack(dest, tgz):
    with tarfile.open(tgz) as tar:
        meta = json.loads(tar.extractfile("package/package.json").read())
        vendor = meta["name"].removeprefix("emoji-datasource-")
        cats = categories(json.loads(tar.extractfile("package/emoji.json").read()))
        prefix = f"package/img/{vendor}/64/"
        n = 0
        for m in tar:
            if not (m.isfile() and m.name.startswith(prefix) and m.name.endswith(".png")):
                continue
            name = m.name[len(prefix):]
            cat = cats.get(name)
            if cat is None or "/" in name:
                continue
            folder = os.path.join(dest, cat)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{vendor}-{name}"), "wb") as f:
                f.write(tar.extractfile(m).read())
            n += 1
    return vendor, meta["version"], n


def main():
    dest, tgzs = sys.argv[1], sys.argv[2:]
    os.makedirs(dest, exist_ok=True)
    lines = [
        "Emoji pictures (64x64 RGBA PNG) from the npm packages emoji-datasource-<vendor>,",
        "one subfolder per category of their emoji.json. The pictures' licences:",
        "",
    ]
    for tgz in tgzs:
        vendor, version, n = unpack(dest, tgz)
        lines.append(f"{vendor}-*.png ({n} pictures, emoji-datasource-{vendor}@{version}): {LICENCES[vendor]}")
        print(f"{vendor}: {n} pictures", file=sys.stderr)
    lines.append("")
    lines.append("The packages' metadata (emoji.json) is MIT-licensed, Copyright (c) 2013 Cal Henderson.")
    with open(os.path.join(dest, "ATTRIBUTION.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
