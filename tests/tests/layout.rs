//! The house rules a newcomer relies on, checked on the source itself: no import circle
//! between the modules of `lockd` or of `xtask`, no source file over 600 lines, and raw
//! `bpf(2)` only where aya has no call (each such place says what aya lacks).
//!
//! A module's edge to another is any path in it (a `use`, a call, a type) that names an item
//! of the other. A module naming its own ancestors (`super::X`, `crate::X` declared in the
//! crate root) is not an edge: Rust makes a parent's items visible to its children, and a
//! parent lists its children. Every other edge counts, siblings and cousins alike.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A module's path inside its crate, from its file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        f => parts.push(f.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// Every path a file names, as written: `use` trees flattened, and expression and type paths.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn tree(&mut self, prefix: &mut Vec<String>, t: &syn::UseTree) {
        match t {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut v = prefix.clone();
                if n.ident != "self" {
                    v.push(n.ident.to_string());
                }
                self.0.push(v);
            }
            syn::UseTree::Rename(r) => {
                let mut v = prefix.clone();
                v.push(r.ident.to_string());
                self.0.push(v);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|i| self.tree(prefix, i)),
        }
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.tree(&mut Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'a syn::Path) {
        self.0.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// The module a path written in module `at` names, if it is one of `modules`.
fn resolve(at: &[String], path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut abs: Vec<String> = match first.as_str() {
        "crate" => path[1..].to_vec(),
        "self" => at.iter().chain(&path[1..]).cloned().collect(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let base = at.get(..at.len().checked_sub(ups)?)?;
            base.iter().chain(&path[ups..]).cloned().collect()
        }
        _ => {
            let child: Vec<String> = at.iter().chain([first]).cloned().collect();
            if !modules.contains(&child) {
                return None;
            }
            at.iter().chain(path).cloned().collect()
        }
    };
    while !abs.is_empty() && !modules.contains(&abs) {
        abs.pop();
    }
    Some(abs)
}

/// The module graph of the crate whose sources are under `src` (edges to ancestors left out).
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // `src/bin/*` are other crates; a crate's `main.rs` beside its `lib.rs` is another crate.
    let has_lib = src.join("lib.rs").exists();
    files.retain(|f| {
        !(f.starts_with(src.join("bin")) || has_lib && f == &src.join("main.rs"))
    });
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let at = module_of(src, f);
        let text = fs::read_to_string(f).expect("read");
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        let to: BTreeSet<Vec<String>> = paths
            .0
            .iter()
            .filter_map(|p| resolve(&at, p, &modules))
            .filter(|m| m != &at && !at.starts_with(m))
            .collect();
        g.insert(at, to);
    }
    g
}

/// Every circle of `g`, each as the modules on it (Tarjan's strongly connected components of
/// more than one module).
fn circles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, (usize, usize)>,
        stack: Vec<&'g Vec<String>>,
        on: BTreeSet<&'g Vec<String>>,
        out: Vec<Vec<String>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g Vec<String>) {
            let i = self.index.len();
            self.index.insert(v, (i, i));
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let Some((w, _)) = self.g.get_key_value(w) else { continue };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.index[w].1.min(self.index[v].1);
                    self.index.get_mut(v).expect("v").1 = low;
                } else if self.on.contains(w) {
                    let low = self.index[w].0.min(self.index[v].1);
                    self.index.get_mut(v).expect("v").1 = low;
                }
            }
            if self.index[v].0 == self.index[v].1 {
                let mut c = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    c.push(name(w));
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    c.reverse();
                    self.out.push(c);
                }
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn name(m: &[String]) -> String {
    if m.is_empty() { "crate".into() } else { m.join("::") }
}

#[test]
fn no_import_circles() {
    let ws = workspace();
    let mut found = Vec::new();
    for krate in ["lockd", "xtask", "lockd-common", "lockd-kit", "tests"] {
        let g = graph(&ws.join(krate).join("src"));
        for c in circles(&g) {
            // The edges inside the circle, so the message says what to cut.
            let edges: Vec<String> = g
                .iter()
                .filter(|(from, _)| c.contains(&name(from)))
                .flat_map(|(from, to)| {
                    to.iter()
                        .filter(|t| c.contains(&name(t)))
                        .map(move |t| format!("{} → {}", name(from), name(t)))
                })
                .collect();
            found.push(format!("{krate}: {} ({})", c.join(", "), edges.join("; ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n  {}", found.join("\n  "));
}

/// The check itself finds a circle: two sibling modules naming each other.
#[test]
fn a_circle_is_found() {
    let dir = std::env::temp_dir().join(format!("lockd-layout-{}", std::process::id()));
    let src = dir.join("src");
    fs::create_dir_all(src.join("a")).expect("mkdir");
    fs::write(src.join("lib.rs"), "mod a; mod b;").expect("write");
    // a names its child c and c its parent a: not a circle. c and b name each other: one.
    fs::write(src.join("a/mod.rs"), "mod c; use c::C; pub struct A;").expect("write");
    fs::write(src.join("a/c.rs"), "use super::A; use crate::b::B; pub struct C;").expect("write");
    fs::write(src.join("b.rs"), "pub struct B; fn f() -> crate::a::c::C { todo!() }").expect("write");
    let found = circles(&graph(&src));
    fs::remove_dir_all(&dir).expect("rm");
    assert_eq!(found, vec![vec!["a::c".to_string(), "b".to_string()]], "{found:?}");
}

#[test]
fn no_file_over_600_lines() {
    let ws = workspace();
    let mut files = Vec::new();
    for krate in ["lockd", "lockd-common", "lockd-ebpf", "lockd-kit", "lockd-domu", "xtask", "tests"] {
        rust_files(&ws.join(krate), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f).expect("read").lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", f.strip_prefix(&ws).unwrap_or(f).display()))
        })
        .collect();
    assert!(long.is_empty(), "files over 600 lines:\n  {}", long.join("\n  "));
}

/// `libc::SYS_bpf` only where aya has no call, and the lines before it say which call is missing
/// (`aya lacks`).
#[test]
fn raw_bpf_only_where_aya_lacks_the_call() {
    let ws = workspace();
    let mut files = Vec::new();
    for krate in ["lockd", "lockd-kit", "tests", "xtask"] {
        rust_files(&ws.join(krate), &mut files);
    }
    let mut bare = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains(concat!("SYS_", "bpf")) && !l.trim_start().starts_with("//") {
                let before = &lines[i.saturating_sub(12)..i];
                if !before.iter().any(|b| b.contains("aya lacks")) {
                    bare.push(format!("{}:{}", f.strip_prefix(&ws).unwrap_or(f).display(), i + 1));
                }
            }
        }
    }
    assert!(bare.is_empty(), "raw bpf(2) with no `aya lacks …` comment:\n  {}", bare.join("\n  "));
}
