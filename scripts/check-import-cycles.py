#!/usr/bin/env python3
"""Reports import cycles between the modules of every crate in the workspace.

A module is a file (`lib.rs`, `main.rs`, `a.rs`, `a/mod.rs`); inline modules
(`mod tests { ... }`) belong to the file they are written in. Module A
depends on module B when A names a path into B: `use crate::b::X`,
`use super::b`, `crate::b::f()` in code, `b::f()` where `b` is a child of A,
or a re-export (`pub use b::X` in a parent). A path resolves to the deepest
module it names, so `crate::Error` (a re-export in the crate root) is a
dependency on the root: import an item from the module that defines it.

Every crate target is checked: `src/lib.rs`, `src/main.rs`, `src/bin/*.rs`,
`tests/*.rs`, `examples/*.rs`, `benches/*.rs` and cargo-fuzz targets.
Prints each cycle with the lines that close it and exits 1 if there is one.

    scripts/check-import-cycles.py [--graph] [--skip CRATE_DIR]... [DIR]
    scripts/check-import-cycles.py --self-test

DIR is the workspace root (default: this script's parent directory);
--skip leaves out the crate in CRATE_DIR (relative to DIR).
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
MOD_DECL = re.compile(
    r"(?:#\s*\[[^\]]*\]\s*)*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])"
)
USE_STMT = re.compile(r"(\bpub(?:\s*\([^)]*\))?\s+)?\buse\s+([^;]*);")
INLINE_PATH = re.compile(r"(?<![\w:])((?:" + IDENT + r")(?:\s*::\s*(?:" + IDENT + r"|\*))+)")


def strip(source):
    """The source with comments and string/char literals blanked out (line
    breaks kept, so offsets still give line numbers)."""
    out = []
    i, n = 0, len(source)

    def blank(text):
        return "".join("\n" if c == "\n" else " " for c in text)

    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(source[i:j]))
            i = j
        elif source.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(source[i:j]))
            i = j
        elif re.match(r'b?r#*"', source[i:i + 70]) and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")):
            m = re.match(r'(b?r)(#*)"', source[i:])
            end = source.find('"' + m.group(2), i + len(m.group(0)))
            j = n if end < 0 else end + 1 + len(m.group(2))
            out.append(blank(source[i:j]))
            i = j
        elif c == '"' or (c == "b" and source.startswith('b"', i) and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_"))):
            j = i + (2 if c == "b" else 1)
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            out.append(blank(source[i:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", source[i:])
            if m:
                out.append(blank(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d as e}}` -> [['a','b'], ['a','c','d']]."""
    tree = re.sub(r"\b(" + IDENT + r")\s+as\s+" + IDENT, r"\1", tree)
    tree = re.sub(r"\s+", "", tree)
    segment = re.compile(r"(" + IDENT + r"|\*)")

    def parse(pos, prefix):
        # One use tree at `pos` under `prefix`: (its paths, the position after it).
        while True:
            if tree.startswith("{", pos):
                pos += 1
                paths = []
                while pos < len(tree) and tree[pos] != "}":
                    sub, pos = parse(pos, list(prefix))
                    paths.extend(sub)
                    if tree.startswith(",", pos):
                        pos += 1
                return paths, pos + 1
            m = segment.match(tree, pos)
            if not m:
                return ([prefix] if prefix else []), pos
            prefix = prefix + [m.group(1)]
            pos = m.end()
            if not tree.startswith("::", pos):
                return [prefix], pos
            pos += 2

    if tree.startswith("::"):
        return []  # an extern crate
    return [p for p in parse(0, [])[0] if p]


class Module:
    def __init__(self, name, path, file, parent):
        self.name = name  # crate::a::b
        self.segments = [] if parent is None else parent.segments + [name.split("::")[-1]]
        self.file = file
        self.parent = parent
        self.children = {}
        self.text = ""
        self.inline_spans = []  # (start, end) of inline `mod x { }` bodies
        self.aliases = {}  # name -> (path, inline depth) of a file-level `use`


def child_files(module_file, is_dir_owner, name):
    base = module_file.parent if is_dir_owner else module_file.with_suffix("")
    for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
        if candidate.is_file():
            return candidate
    return None


def load(root_file):
    """The module tree of the crate whose root is `root_file`."""
    root = Module("crate", [], root_file, None)
    modules = [root]
    stack = [(root, True)]
    while stack:
        module, is_dir_owner = stack.pop()
        raw = module.file.read_text(encoding="utf-8")
        module.text = strip(raw)
        # Inline modules: record their brace spans (for `super::` depth).
        for m in MOD_DECL.finditer(module.text):
            if m.group(2) == "{":
                start = m.end() - 1
                depth, j = 0, start
                while j < len(module.text):
                    if module.text[j] == "{":
                        depth += 1
                    elif module.text[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                module.inline_spans.append((start, j))
        for m in MOD_DECL.finditer(module.text):
            if m.group(2) != ";" or inline_depth(module, m.start()):
                continue
            name = m.group(1)
            file = child_files(module.file, is_dir_owner, name)
            if file is None:
                continue  # e.g. behind a cfg for another platform
            child = Module(f"{module.name}::{name}", None, file, module)
            module.children[name] = child
            modules.append(child)
            stack.append((child, file.name == "mod.rs"))
    return root, modules


def inline_depth(module, offset):
    return sum(1 for start, end in module.inline_spans if start < offset < end)


def resolve(module, segments, depth, seen=0):
    """The module a path names, or None for paths outside the crate."""
    head = segments[0]
    if head == "crate":
        target, rest = module, segments[1:]
        while target.parent is not None:
            target = target.parent
    elif head in ("super", "self"):
        target, rest = module, segments
        # Inline modules sit between the file module and the path.
        levels = 0
        while rest and rest[0] in ("super", "self"):
            levels += rest[0] == "super"
            rest = rest[1:]
        levels -= depth
        for _ in range(max(levels, 0)):
            if target.parent is None:
                return None
            target = target.parent
    elif head in module.children and depth == 0:
        target, rest = module.children[head], segments[1:]
    else:
        return None
    for i, segment in enumerate(rest):
        if segment in target.children:
            target = target.children[segment]
        elif segment in target.aliases and seen < 16:
            # A name another module imported or re-exported: the path
            # leads to where that name comes from.
            path, alias_depth = target.aliases[segment]
            through = resolve(target, path + rest[i + 1:], alias_depth, seen + 1)
            return through if through is not None else target
        else:
            break
    return target


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def uses_of(module):
    """(path, is_pub, inline depth, offset) of every path in a `use`."""
    for m in USE_STMT.finditer(module.text):
        depth = inline_depth(module, m.start())
        for path in expand_use(m.group(2)):
            yield path, m.group(1) is not None, depth, m.start()


def collect_aliases(module):
    for path, _, depth, _ in uses_of(module):
        name = path[-1]
        if depth == 0 and name not in ("*", "self"):
            module.aliases[name] = (path, depth)
        elif depth == 0 and name == "self" and len(path) > 1:
            module.aliases[path[-2]] = (path[:-1], depth)


def edges_of(module):
    """(target module, line) for every path in `module` into another module.

    A `use` is a dependency; a re-export (`pub use`) is one only if the
    module itself uses the name it re-exports.
    """
    found = []
    text = module.text
    masked = list(text)
    for m in USE_STMT.finditer(text):
        for i in range(m.start(), m.end()):
            if masked[i] != "\n":
                masked[i] = " "
    masked = "".join(masked)
    # Where names re-exported at file level can be used: outside inline
    # modules, which import their own.
    outer = list(masked)
    for start, end in module.inline_spans:
        for i in range(start, end):
            if outer[i] != "\n":
                outer[i] = " "
    outer = "".join(outer)
    for path, is_pub, depth, offset in uses_of(module):
        name = path[-1] if path[-1] != "self" else path[-2] if len(path) > 1 else ""
        if is_pub and name != "*" and not re.search(r"(?<![\w:])" + re.escape(name) + r"\b", outer):
            continue
        target = resolve(module, [p for p in path if p != "*"] or path, depth)
        if target is not None:
            found.append((target, line_of(text, offset)))
    for m in INLINE_PATH.finditer(masked):
        path = [p.strip() for p in m.group(1).split("::")]
        target = resolve(module, path, inline_depth(module, m.start()))
        if target is not None:
            found.append((target, line_of(text, m.start())))
    return [(t, line) for t, line in found if t is not module]


def cycles(modules):
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {}
    for module in modules:
        collect_aliases(module)
    for module in modules:
        graph[module] = {}
        for target, line in edges_of(module):
            graph[module].setdefault(target, line)
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w is v:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(10000)
    for v in modules:
        if v not in index:
            visit(v)
    return graph, components


def crate_roots(workspace):
    for manifest in sorted(workspace.rglob("Cargo.toml")):
        if any(part in ("target", "vendor") or part.startswith("target-") for part in manifest.relative_to(workspace).parts):
            continue
        package = manifest.parent
        roots = [package / "src/lib.rs", package / "src/main.rs"]
        for pattern in ("src/bin/*.rs", "tests/*.rs", "examples/*.rs", "benches/*.rs", "fuzz_targets/*.rs"):
            roots.extend(sorted(package.glob(pattern)))
        for root in roots:
            if root.is_file():
                yield root


SELF_TEST_CASES = {
    # name: (files, expected cycles as sorted module-name lists)
    "plain cycle": ({
        "src/lib.rs": "mod a;\nmod b;\n",
        "src/a.rs": "use crate::b::B;\npub struct A;\n",
        "src/b.rs": "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
    }, [["crate::a", "crate::b"]]),
    "a facade re-exporting the children that implement its trait": ({
        "src/lib.rs": "mod store;\npub use store::{Store, File};\n",
        "src/store/mod.rs": "mod file;\npub use file::File;\npub trait Store {}\n",
        "src/store/file.rs": "use super::Store;\npub struct File;\nimpl Store for File {}\n",
    }, []),
    "a facade that also uses what it re-exports": ({
        "src/lib.rs": "mod store;\n",
        "src/store/mod.rs": "mod file;\npub use file::File;\npub trait Store {}\nfn open() -> File { File }\n",
        "src/store/file.rs": "use super::Store;\npub struct File;\nimpl Store for File {}\n",
    }, [["crate::store", "crate::store::file"]]),
    "a re-export leads to its defining module": ({
        "src/lib.rs": "mod a;\nmod error;\npub use error::Error;\n",
        "src/a.rs": "pub fn f() -> crate::Error { todo!() }\npub struct Part;\n",
        "src/error.rs": "use crate::a::Part;\npub struct Error(Part);\n",
    }, [["crate::a", "crate::error"]]),
    "inline test modules, comments and strings": ({
        "src/lib.rs": "mod a;\nmod b;\n",
        "src/a.rs": "// use crate::b;\nconst S: &str = \"crate::b::x\";\npub fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        "src/b.rs": "use crate::a::f;\n",
    }, []),
    "a parent calling into a child that imports from it": ({
        "src/main.rs": "mod daemon;\nfn main() {}\n",
        "src/daemon/mod.rs": "mod nbd;\npub struct Config;\nfn run() { nbd::bind(); }\n",
        "src/daemon/nbd.rs": "use super::Config;\npub fn bind() {}\n",
    }, [["crate::daemon", "crate::daemon::nbd"]]),
}


def self_test():
    import tempfile
    failures = 0
    for name, (files, expected) in SELF_TEST_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "Cargo.toml").write_text("[package]\nname = \"t\"\n")
            for path, text in files.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(text)
            found = []
            for root_file in crate_roots(root):
                _, modules = load(root_file)
                found.extend(sorted(m.name for m in c) for c in cycles(modules)[1])
            if sorted(found) != sorted(expected):
                failures += 1
                print(f"self-test {name!r}: found {found}, expected {expected}")
    print(f"self-test: {len(SELF_TEST_CASES) - failures} of {len(SELF_TEST_CASES)} cases pass")
    return 1 if failures else 0


def main(argv):
    if "--self-test" in argv:
        return self_test()
    show_graph = "--graph" in argv
    skip, args, rest = [], [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--skip" and rest:
            skip.append(rest.pop(0).strip("/"))
        elif arg != "--graph":
            args.append(arg)
    workspace = Path(args[0] if args else Path(__file__).resolve().parent.parent).resolve()
    failed = False
    checked = 0
    for root_file in crate_roots(workspace):
        where = root_file.relative_to(workspace)
        if any(where.parts[:len(Path(s).parts)] == Path(s).parts for s in skip):
            continue
        _, modules = load(root_file)
        graph, components = cycles(modules)
        checked += 1
        if show_graph:
            for module in modules:
                for target, line in sorted(graph[module].items(), key=lambda kv: kv[0].name):
                    print(f"{where}: {module.name} -> {target.name}  ({module.file.relative_to(workspace)}:{line})")
        for component in components:
            failed = True
            members = set(component)
            print(f"{where}: import cycle among {len(component)} modules:")
            for module in sorted(component, key=lambda m: m.name):
                for target, line in sorted(graph[module].items(), key=lambda kv: kv[0].name):
                    if target in members:
                        print(f"  {module.name} -> {target.name}  ({module.file.relative_to(workspace)}:{line})")
    skipped = f" (skipped: {', '.join(skip)})" if skip else ""
    print(f"checked {checked} crate targets{skipped}: {'import cycles found' if failed else 'no import cycles'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
