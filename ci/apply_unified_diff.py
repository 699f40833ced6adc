"""Applies unified diffs (as ``ray-patches/regen`` writes them, ``-p1``) to a
directory without the ``patch`` program, for machines whose image lacks it
(ci/gpu-nightly's offline path).

    python ci/apply_unified_diff.py SITE_PACKAGES PATCH...

Only exact context is accepted: each hunk must match where it says or, failing
that, at exactly one other place; anything else is an error and nothing of that
file is written. A file whose hunks are all applied already is left alone, so
running it twice is harmless.
"""

import sys


def parse(text):
    """[(path, [hunk])]; a hunk is a list of (tag, line) with tag ' ', '-' or '+'."""
    files, hunks, hunk = [], None, None
    for line in text.splitlines(keepends=True):
        if line.startswith("+++ "):
            path = line[4:].strip().split("\t")[0]
            hunks = []
            files.append((path.split("/", 1)[1], hunks))
        elif line.startswith("--- "):
            continue
        elif line.startswith("@@"):
            hunk = []
            hunks.append(hunk)
        elif line.startswith("\\"):
            continue  # "\ No newline at end of file"
        elif hunk is not None and line[:1] in (" ", "-", "+"):
            hunk.append((line[0], line[1:]))
        elif hunk is not None and line in ("\n", ""):
            hunk.append((" ", line))
    return files


def find(lines, block, start=0):
    """Start indices where ``block`` occurs in ``lines``."""
    n = len(block)
    return [i for i in range(start, len(lines) - n + 1) if lines[i : i + n] == block]


def apply(lines, hunks, path):
    """The patched lines, or None when every hunk is applied already."""
    olds = [[l for t, l in h if t != "+"] for h in hunks]
    news = [[l for t, l in h if t != "-"] for h in hunks]
    if all(find(lines, new) and (new == old or not find(lines, old)) for old, new in zip(olds, news)):
        return None
    out, pos = [], 0
    for old, new in zip(olds, news):
        at = find(lines, old, pos)
        if not at:
            raise SystemExit(f"apply_unified_diff: a hunk does not match {path} (modified installation?)")
        if len(at) > 1 and len(find(lines, old)) > 1:
            raise SystemExit(f"apply_unified_diff: a hunk matches {path} in several places")
        i = at[0]
        out.extend(lines[pos:i])
        out.extend(new)
        pos = i + len(old)
    out.extend(lines[pos:])
    return out


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    root, patches = argv[0], argv[1:]
    for patch in patches:
        with open(patch) as f:
            files = parse(f.read())
        for rel, hunks in files:
            path = f"{root}/{rel}"
            with open(path) as f:
                lines = f.readlines()
            patched = apply(lines, hunks, path)
            name = patch.rsplit("/", 1)[-1]
            if patched is None:
                print(f"ray-patches: {name} already applied")
                continue
            with open(path, "w") as f:
                f.writelines(patched)
            print(f"ray-patches: {name} applied (without the patch program)")


if __name__ == "__main__":
    main(sys.argv[1:])
