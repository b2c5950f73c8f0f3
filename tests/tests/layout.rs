//! The house rules a newcomer relies on, checked on the source itself: no import circle
//! between the modules of any crate of the workspace (lockd, xtask, the test binaries …), no
//! source file over 600 lines, and raw `bpf(2)` only where aya has no call (each such place
//! says what aya lacks).
//!
//! A module's edge to another is any path in it (a `use`, a call, a type, a path inside a
//! macro call) that names an item of the other, followed through re-exports and imported
//! names to the module that defines it. A module naming its own ancestors (`super::X`, `crate::X` declared in the
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

/// A module's path inside its crate, from its file under the crate's root directory.
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

/// What a file names: every path (`use` trees flattened, expression and type paths, and
/// `a::b` token runs inside macro calls such as `format!` or `tracing::info!`), and the names
/// its `use` items bring in, each with the path it stands for.
#[derive(Default)]
struct Paths {
    paths: Vec<Vec<String>>,
    imports: Vec<(String, Vec<String>)>,
}

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
                if let Some(last) = v.last() {
                    self.imports.push((last.clone(), v.clone()));
                }
                self.paths.push(v);
            }
            syn::UseTree::Rename(r) => {
                let mut v = prefix.clone();
                v.push(r.ident.to_string());
                self.imports.push((r.rename.to_string(), v.clone()));
                self.paths.push(v);
            }
            syn::UseTree::Glob(_) => self.paths.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|i| self.tree(prefix, i)),
        }
    }

    /// `a::b::c` runs of identifiers in a macro's tokens.
    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let mut run: Vec<String> = Vec::new();
        let mut colons = 0;
        let flush = |run: &mut Vec<String>, paths: &mut Vec<Vec<String>>| {
            if run.len() > 1 {
                paths.push(std::mem::take(run));
            }
            run.clear();
        };
        for t in ts {
            match t {
                TokenTree::Ident(i) if run.is_empty() || colons == 2 => {
                    run.push(i.to_string());
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() && colons < 2 => {
                    colons += 1;
                }
                TokenTree::Group(g) => {
                    flush(&mut run, &mut self.paths);
                    colons = 0;
                    self.tokens(g.stream());
                }
                other => {
                    flush(&mut run, &mut self.paths);
                    colons = 0;
                    if let TokenTree::Ident(i) = other {
                        run.push(i.to_string());
                    }
                }
            }
        }
        flush(&mut run, &mut self.paths);
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.tree(&mut Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'a syn::Path) {
        self.paths.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
    fn visit_macro(&mut self, m: &'a syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// A crate's modules and what each names.
struct Crate {
    modules: BTreeMap<Vec<String>, Paths>,
}

impl Crate {
    /// A path written in module `at`, made absolute (`crate::`, `self::`, `super::`; anything
    /// else is taken as relative to `at`, where an import or a child module may resolve it).
    fn absolute(at: &[String], path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?;
        Some(match first.as_str() {
            "crate" => path[1..].to_vec(),
            "self" => at.iter().chain(&path[1..]).cloned().collect(),
            "super" => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let base = at.get(..at.len().checked_sub(ups)?)?;
                base.iter().chain(&path[ups..]).cloned().collect()
            }
            _ => at.iter().chain(path).cloned().collect(),
        })
    }

    /// The module an absolute path lands in: its longest module prefix, followed through that
    /// module's imports when the next segment is a name it imports (a re-export, or a module
    /// imported by name).
    fn module(&self, abs: Vec<String>, depth: u32) -> Vec<String> {
        let mut m = abs.clone();
        while !m.is_empty() && !self.modules.contains_key(&m) {
            m.pop();
        }
        if depth > 0
            && let Some(next) = abs.get(m.len())
            && let Some(paths) = self.modules.get(&m)
            && let Some((_, to)) = paths.imports.iter().find(|(n, _)| n == next)
            && let Some(target) = Self::absolute(&m, to)
        {
            let rest = target.into_iter().chain(abs[m.len() + 1..].iter().cloned()).collect();
            return self.module(rest, depth - 1);
        }
        m
    }
}

/// The module graph of the crate rooted at `root` (its `lib.rs` or `main.rs`), over the files
/// under `dir` (edges to ancestors left out). `skip` are directories of other crates.
fn graph(dir: &Path, skip: &[PathBuf]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.retain(|f| !skip.iter().any(|s| f.starts_with(s)));
    let mut krate = Crate {
        modules: BTreeMap::new(),
    };
    for f in &files {
        let text = fs::read_to_string(f).expect("read");
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        krate.modules.insert(module_of(dir, f), paths);
    }
    let mut g = BTreeMap::new();
    for (at, paths) in &krate.modules {
        let to: BTreeSet<Vec<String>> = paths
            .paths
            .iter()
            .filter_map(|p| Crate::absolute(at, p))
            .map(|abs| krate.module(abs, 4))
            .filter(|m| m != at && !at.starts_with(m))
            .collect();
        g.insert(at.clone(), to);
    }
    g
}

/// Every crate of the workspace with more than one file: its name, directory and the
/// directories inside it that belong to other crates.
fn crates() -> Vec<(String, PathBuf, Vec<PathBuf>)> {
    let ws = workspace();
    let mut out = Vec::new();
    for pkg in ["lockd", "lockd-common", "lockd-ebpf", "lockd-kit", "lockd-domu", "xtask", "tests"] {
        let src = ws.join(pkg).join("src");
        let bin = src.join("bin");
        let mut others = vec![bin.clone()];
        if src.join("lib.rs").exists() {
            // A `main.rs` beside `lib.rs` is a crate of its own (one file).
            others.push(src.join("main.rs"));
        }
        out.push((pkg.to_string(), src.clone(), others));
        for e in fs::read_dir(&bin).into_iter().flatten().flatten() {
            if e.path().join("main.rs").is_file() {
                let name = format!("{pkg}/bin/{}", e.file_name().to_string_lossy());
                out.push((name, e.path(), Vec::new()));
            }
        }
    }
    out
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
    let mut found = Vec::new();
    for (krate, dir, skip) in crates() {
        let g = graph(&dir, &skip);
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

/// The check itself finds a circle: two modules naming each other, one of them through a
/// parent's re-export and one inside a macro call; a child naming its parent is none.
#[test]
fn a_circle_is_found() {
    let dir = std::env::temp_dir().join(format!("lockd-layout-{}", std::process::id()));
    let src = dir.join("src");
    fs::create_dir_all(src.join("a")).expect("mkdir");
    fs::write(src.join("lib.rs"), "mod a; mod b; mod d;").expect("write");
    fs::write(src.join("a/mod.rs"), "mod c; pub use c::C; pub struct A;").expect("write");
    fs::write(src.join("a/c.rs"), "use super::A; use crate::b::B; pub struct C;").expect("write");
    fs::write(src.join("b.rs"), "pub struct B; fn f() -> crate::a::C { todo!() }").expect("write");
    fs::write(src.join("d.rs"), "fn g() { println!(\"{}\", crate::b::B); }").expect("write");
    let g = graph(&src, &[]);
    let found = circles(&g);
    fs::remove_dir_all(&dir).expect("rm");
    assert_eq!(found, vec![vec!["a::c".to_string(), "b".to_string()]], "{found:?}");
    assert!(g[&vec!["d".to_string()]].contains(&vec!["b".to_string()]), "{g:?}");
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
