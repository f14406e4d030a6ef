#!/usr/bin/env bash
# The code's shape in a few numbers, for comparing two revisions:
#   scripts/code-figures.sh            # this checkout
#   git archive REV | tar -x -C /tmp/rev && scripts/code-figures.sh /tmp/rev
# Lines of Rust per directory (files directly in it), `json!` calls outside attributes (OpenAPI
# examples) and tests in src/, handlers answering an untyped `Json<Value>`, the largest files and
# functions (unit tests left out), and the `duplicates` count when that tool is installed.
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"
echo "lines of Rust per directory:"
for d in src src/http src/flows src/kommo src/sellers src/store src/bin actors/src actors/src/store \
         actors/tests tests tests/support loadgen/src; do
  [ -d "$d" ] || continue
  printf '  %-20s %6d\n' "$d" "$(find "$d" -maxdepth 1 -name '*.rs' -exec cat {} + | wc -l)"
done
python3 - "$root" <<'PY'
import os, re, sys
root = sys.argv[1]

def rust_files(base):
    for dp, _, fs in os.walk(os.path.join(root, base)):
        for f in fs:
            if f.endswith('.rs'):
                yield os.path.join(dp, f)

def without_attributes_and_tests(text):
    text = re.sub(r'(?s)#\[cfg\(test\)\]\s*mod tests \{.*', '', text)
    out, i = [], 0
    while i < len(text):
        if text.startswith('#[', i):
            depth, j = 0, i + 1
            while j < len(text):
                depth += {'[': 1, ']': -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            i = j + 1
            continue
        out.append(text[i])
        i += 1
    return ''.join(out)

json_calls = sum(len(re.findall(r'json!\(', without_attributes_and_tests(open(p).read())))
                 for p in rust_files('src'))
untyped = sum(len(re.findall(r'Json<(serde_json::)?Value>', open(p).read()))
              for p in rust_files('src/http'))
print(f"json! calls in src/ outside attributes and tests: {json_calls}")
print(f"Json<Value> in src/http (untyped answers): {untyped}")

functions = []
for base in ('src', 'actors/src'):
    for p in rust_files(base):
        lines = open(p).read().split('\n')
        if '#[cfg(test)]' in lines:
            lines = lines[:lines.index('#[cfg(test)]')]
        for i, l in enumerate(lines):
            m = re.match(r'^(\s*)(pub(\([a-z]+\))? )?(async )?fn (\w+)', l)
            if not m:
                continue
            for j in range(i + 1, len(lines)):
                if lines[j] == m.group(1) + '}':
                    functions.append((j - i + 1, os.path.relpath(p, root) + '::' + m.group(5)))
                    break
functions.sort(reverse=True)
print("largest functions:")
for n, name in functions[:5]:
    print(f"  {n:5d} {name}")
handlers = [f for f in functions if f[1].startswith('src/http/') and not f[1].startswith('src/http/view')]
print("largest functions in src/http:")
for n, name in handlers[:3]:
    print(f"  {n:5d} {name}")
PY
python3 - "$root" <<'PY'
# Import cycles between the top-level modules of a crate: `crate::x` references (unit tests and
# comments left out), then the strongly connected components of that graph.
import os, re, sys
root = sys.argv[1]
for crate in ('src', 'actors/src'):
    base = os.path.join(root, crate)
    if not os.path.isdir(base):
        continue
    deps = {}
    for dp, _, fs in os.walk(base):
        for f in fs:
            if not f.endswith('.rs'):
                continue
            parts = os.path.relpath(os.path.join(dp, f), base)[:-3].split('/')
            if parts[-1] == 'mod':
                parts = parts[:-1]
            if parts in (['lib'], ['main']) or not parts:
                continue
            text = open(os.path.join(dp, f)).read()
            text = re.sub(r'(?s)#\[cfg\(test\)\]\s*mod tests \{.*', '', text)
            text = re.sub(r'//.*', '', text)
            deps.setdefault(parts[0], set()).update(
                d for d in re.findall(r'\bcrate::(\w+)', text) if d != parts[0])
    index, low, stack, on, found = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in deps.get(v, ()):
            if w not in deps:
                continue
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in list(deps):
        if v not in index:
            visit(v)
    print(f"import cycles among {crate}/ modules: {found if found else 'none'}")
PY
echo "largest files:"
find src actors/src loadgen/src -name '*.rs' 2>/dev/null | xargs wc -l | sort -rn | sed -n 2,6p
if command -v duplicates >/dev/null 2>&1; then
  echo "duplicates: $(duplicates --repo . --seconds 120 | head -1)"
fi
