"""How big the commits since BASE are, against the workplace's limit on one session's submission.

    python scripts/submission_size.py BASE        # BASE: the commit the session started from

A submission is refused whole when the diffs of all its commits add up to more than 256 MiB. This
counts, per commit, the old and the new blob of every changed file (a conservative reading of "the
diff as text": a checkpoint rewritten in three commits counts six times), and prints the largest.
Submodule entries and objects this clone lacks count 0; merge commits count only through the
commits they bring in.
Exits 1 above the limit. Stops 22 and 23 lost everything by committing the 81 MB `last.ckpt` three
times; commit checkpoints once, at the end of a session.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

LIMIT_MIB = 256


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def blob_sizes(blobs: set[str]) -> dict[str, int]:
    blobs = {b for b in blobs if set(b) != {"0"}}
    if not blobs:
        return {}
    out = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objectsize)"], check=True,
                         capture_output=True, text=True, input="\n".join(sorted(blobs)) + "\n").stdout
    sizes = {}
    for line in out.splitlines():
        name, size = line.split()[:2]
        if size.isdigit():  # "<sha> missing": a submodule's commit, or an object this clone lacks
            sizes[name] = int(size)
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit this session started from")
    args = parser.parse_args()
    changes = []  # (commit, path, old blob, new blob)
    for commit in git("rev-list", "--reverse", f"{args.base}..HEAD").split():
        for line in git("diff-tree", "-r", "--no-commit-id", "--raw", "--no-renames", commit).splitlines():
            meta, path = line.split("\t", 1)
            _, _, old, new, _ = meta.split()
            changes.append((commit[:8], path, old, new))
    sizes = blob_sizes({blob for change in changes for blob in change[2:]})
    per_file = sorted(((sizes.get(old, 0) + sizes.get(new, 0), commit, path) for commit, path, old, new in changes),
                      reverse=True)
    total = sum(size for size, _, _ in per_file)
    for size, commit, path in per_file[:10]:
        print(f"{size / 2**20:8.1f} MiB  {commit}  {path}")
    print(f"{total / 2**20:.1f} MiB in {len(changes)} file changes (limit {LIMIT_MIB} MiB)")
    return 0 if total <= LIMIT_MIB * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
