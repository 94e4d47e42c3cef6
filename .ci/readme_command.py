"""Print the shell command that README.md marks with <!-- NAME --> (the next fenced block)."""

import re
import sys
from pathlib import Path

name = sys.argv[1]
text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
m = re.search(rf"<!-- {re.escape(name)} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
if not m:
    sys.exit(f"README.md has no block marked <!-- {name} -->")
lines = [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
print(" ".join(ln.rstrip("\\").strip() for ln in lines))
