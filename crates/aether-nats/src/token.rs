//! The one encoding of text as a single NATS subject token (and KV key): injective and
//! invertible, so ids with dots, wildcards, spaces or any UTF-8 are safe in subjects.

/// Encodes any text (an actor id, a type or reminder name) as one subject token and KV key,
/// injectively.
///
/// ASCII letters, digits and `-` are kept; `_` becomes `__`; every other byte of the UTF-8
/// encoding becomes `_` and two uppercase hex digits. So `order-123` stays readable, and `a.b`,
/// `*`, `>`, spaces or non-ASCII can neither split a subject nor act as a wildcard.
pub fn encode(actor_id: &str) -> String {
    let mut out = String::with_capacity(actor_id.len() + 8);
    for b in actor_id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('_');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

/// Inverts [`encode`]; `None` if `token` is not one of its outputs.
pub fn decode(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                if bytes.get(i + 1) == Some(&b'_') {
                    out.push(b'_');
                    i += 2;
                } else {
                    let hex = token.get(i + 1..i + 3)?;
                    if !hex
                        .bytes()
                        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                    {
                        return None;
                    }
                    let b = u8::from_str_radix(hex, 16).ok()?;
                    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                        return None; // would have been kept or doubled
                    }
                    out.push(b);
                    i += 3;
                }
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}
