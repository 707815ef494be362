//! Running the workspace's programs (examples, the `kvmi-sim` binary) from tests, as a
//! user runs them: built once per test process with this test binary's profile and target
//! directory (so a `--release` test run does not test stale debug builds), and killed at a
//! deadline so a hung program fails its test instead of hanging the suite.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>-…`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Runs `cargo build --quiet ARGS` for this test binary's profile and target directory,
/// once per test process for the same `args`; panics if the build fails.
pub fn cargo_build(args: &[&str]) {
    static DONE: OnceLock<Mutex<HashSet<Vec<String>>>> = OnceLock::new();
    let key: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // Held across the build: two tests asking for the same build wait for one cargo run.
    let mut done = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if done.contains(&key) {
        return;
    }
    let profile_dir = profile_dir();
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--quiet", "--profile", profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("target/<profile> has a parent"))
        .args(args)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    done.insert(key);
}

/// The examples directory after building the examples of `package`.
pub fn examples_dir(package: &str) -> PathBuf {
    cargo_build(&["-p", package, "--examples"]);
    profile_dir().join("examples")
}

/// Runs example `name` of `package` with `args`, killed after `timeout` (the test then
/// fails with what it printed).
pub fn run_example<S: AsRef<OsStr>>(
    package: &str,
    name: &str,
    args: &[S],
    timeout: Duration,
) -> Output {
    let exe = examples_dir(package).join(name);
    let child = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    wait_output(child, name, timeout)
}

/// Waits for `child` at most `timeout` and returns its output; past it, kills the child
/// and fails the test with what it printed.
///
/// Its pipes are drained while it runs, so a program printing more than a pipe holds
/// cannot stall against the deadline.
pub fn wait_output(mut child: Child, what: &str, timeout: Duration) -> Output {
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    };
    let out = |h: JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    let (stdout, stderr) = (out(stdout), out(stderr));
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} ran longer than {timeout:?}; it printed:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// A program's status and output, for a failure message.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs example `name` of `package` and returns its stdout; fails the test with its
/// output if it exits unsuccessfully.
pub fn run_example_ok<S: AsRef<OsStr>>(
    package: &str,
    name: &str,
    args: &[S],
    timeout: Duration,
) -> String {
    let out = run_example(package, name, args, timeout);
    assert!(
        out.status.success(),
        "{name} {:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
