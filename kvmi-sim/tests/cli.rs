//! The `kvmi-sim` binary against a minimal hand-rolled tool.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

fn frame(id: u16, seq: u32, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(p.len() as u16).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(p);
    f
}

#[test]
fn binary_runs_workload_and_prints_summary() {
    let path = std::env::temp_dir().join(format!("kvmi-sim-cli-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvmi-sim"))
        .args(["--socket", path.to_str().unwrap(), "--vcpus", "1"])
        .args(["--duration", "0.5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut hello = [0u8; 96];
    s.read_exact(&mut hello).unwrap();
    let mut reply = 24u32.to_le_bytes().to_vec();
    reply.extend_from_slice(&[0; 20]);
    s.write_all(&reply).unwrap();
    // Enable UNHOOK (VM event 0) and XSETBV (3) on vCPU 0.
    s.write_all(&frame(8, 1, &[0, 0, 1, 0, 0, 0, 0, 0]))
        .unwrap();
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&[3, 0, 1, 0, 0, 0, 0, 0]);
    s.write_all(&frame(9, 2, &p)).unwrap();
    let mut xsetbv = 0;
    loop {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let id = u16::from_le_bytes([h[0], h[1]]);
        let size = u16::from_le_bytes([h[2], h[3]]) as usize;
        let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut d = vec![0u8; size];
        s.read_exact(&mut d).unwrap();
        if id == 1 {
            match d[4] {
                0 => break, // UNHOOK: close.
                ev => {
                    xsetbv += usize::from(ev == 3);
                    let mut r = vec![0u8; 8];
                    r.extend_from_slice(&[0, ev, 0, 0, 0, 0, 0, 0]);
                    s.write_all(&frame(0, seq, &r)).unwrap();
                }
            }
        } else {
            assert_eq!(&d[..4], &[0; 4], "command {id} failed");
        }
    }
    drop(s);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success());
    assert!(xsetbv > 0);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("XSETBV"), "{text}");
    assert!(text.contains("VCPU_CONTROL_EVENTS"), "{text}");
}
