//! The element codec: one task as one Redis string.
//!
//! `<id>:<attempts>:<enqueued_at>:<key length or ->:<key><payload>`, where
//! `attempts` counts the deliveries so far (the next lease is delivery
//! `attempts + 1`). A dead letter prefixes its element with
//! `<failed_at>:<reason length>:<reason>`. The Lua scripts read only the
//! id and bump the attempts; everything else is written and read here.

/// A new task's element without its `id:0:` head, which the push script
/// adds: `<enqueued_at>:<key length or ->:<key><payload>`, written into `out`.
pub(super) fn pack(out: &mut Vec<u8>, enqueued_at: u64, key: Option<&str>, payload: &[u8]) {
    use std::io::Write;
    out.clear();
    let _ = match key {
        Some(k) => write!(out, "{enqueued_at}:{}:{k}", k.len()),
        None => write!(out, "{enqueued_at}:-:"),
    };
    out.extend_from_slice(payload);
}

/// A task element as stored in Redis.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Element {
    pub(super) id: u64,
    /// Deliveries counted so far; the next lease is delivery `attempts + 1`.
    pub(super) attempts: u32,
    pub(super) enqueued_at: u64,
    pub(super) key: Option<String>,
    pub(super) payload: Vec<u8>,
}

/// Splits `<number>:` off the front of `v[at..]`; returns it and the
/// position after the colon.
fn field(v: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = v.get(at..)?;
    let n = rest.iter().position(|&b| b == b':')?;
    Some((std::str::from_utf8(&rest[..n]).ok()?, at + n + 1))
}

/// Parses `<id>:<attempts>:<enqueued_at>:<key length or ->:<key><payload>`,
/// reusing the buffer for the payload; gives the buffer back if it does
/// not parse.
pub(super) fn unpack(mut v: Vec<u8>) -> Result<Element, Vec<u8>> {
    let Some((mut e, start)) = header(&v) else {
        return Err(v);
    };
    v.drain(..start);
    e.payload = v;
    Ok(e)
}

/// An element's fields but the payload, and where the payload starts.
fn header(v: &[u8]) -> Option<(Element, usize)> {
    let (id, at) = field(v, 0)?;
    let id = id.parse().ok()?;
    let (attempts, at) = field(v, at)?;
    let attempts = attempts.parse().ok()?;
    let (enqueued, at) = field(v, at)?;
    let enqueued_at = enqueued.parse().ok()?;
    let (key, at) = field(v, at)?;
    let (key, start) = match key {
        "-" => (None, at),
        n => {
            let end = at.checked_add(n.parse().ok()?)?;
            let k = v.get(at..end)?;
            (Some(String::from_utf8(k.to_vec()).ok()?), end)
        }
    };
    let e = Element {
        id,
        attempts,
        enqueued_at,
        key,
        payload: Vec::new(),
    };
    Some((e, start))
}

/// Parses a dead letter: `<failed_at>:<reason length>:<reason><element>`.
pub(super) fn unpack_dead(v: Vec<u8>) -> Option<(u64, String, Element)> {
    let (failed, at) = field(&v, 0)?;
    let failed_at = failed.parse().ok()?;
    let (n, at) = field(&v, at)?;
    let end = at.checked_add(n.parse().ok()?)?;
    let reason = String::from_utf8_lossy(v.get(at..end)?).into_owned();
    Some((failed_at, reason, unpack(v[end..].to_vec()).ok()?))
}
