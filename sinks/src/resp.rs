//! Valkey commands written straight into a byte buffer in the wire form the server reads
//! ([RESP]): each command an array of bulk strings, `*N\r\n` then `$LEN\r\nARG\r\n` per
//! argument. This is what the `redis` crate's `Cmd` packs, without a `Cmd` (and its allocation
//! per argument) in between.
//!
//! [RESP]: https://valkey.io/topics/protocol/

/// Appends the header of a command of `args` arguments (the command name counts).
pub(crate) fn command(out: &mut Vec<u8>, args: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument.
pub(crate) fn arg(out: &mut Vec<u8>, a: &[u8]) {
    arg_parts(out, &[a]);
}

/// Appends one argument made of several parts back to back (`p|KEY` without building it).
pub(crate) fn arg_parts(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer argument in decimal.
pub(crate) fn arg_u64(out: &mut Vec<u8>, v: u64) {
    arg(out, itoa::Buffer::new().format(v).as_bytes());
}

/// Appends a float argument as the `redis` crate writes an `f64` (`ryu`: `0.5`, `1.0`).
pub(crate) fn arg_f64(out: &mut Vec<u8>, v: f64) {
    arg(out, ryu::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_the_redis_crate() {
        let mut out = Vec::new();
        command(&mut out, 5);
        arg(&mut out, b"ZADD");
        arg_parts(&mut out, &[b"fp:", b"ifu:1"]);
        arg(&mut out, b"GT");
        arg_f64(&mut out, 0.5);
        arg_u64(&mut out, 1_234_567_890_123);
        let want = redis::cmd("ZADD")
            .arg("fp:ifu:1")
            .arg("GT")
            .arg(0.5)
            .arg(1_234_567_890_123u64)
            .get_packed_command();
        assert_eq!(out, want);
    }
}
