//! `Authorization: Basic` for client_secret_basic (RFC 6749 §2.3.1), and
//! base64url for PKCE.
//!
//! Encode-only base64 (RFC 4648 §4) written out here: the `base64` crate's
//! general engine costs the component about 5 KB for these dozen lines. The
//! tests check it against that crate and the RFC's vectors.

use alloc::format;
use alloc::string::String;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The header value: both parts form-urlencoded, joined by `:`, base64.
pub fn header_value(client_id: &str, client_secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
    format!("Basic {}", base64(pair.as_bytes()))
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn base64(input: &[u8]) -> String {
    encode(input, ALPHABET, true)
}

/// base64url without padding (RFC 4648 §5; RFC 7636 Appendix A), for the
/// `state` and the PKCE verifier and challenge.
pub fn base64url(input: &[u8]) -> String {
    encode(input, URL_ALPHABET, false)
}

const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn agrees_with_the_base64_crate() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in 0..bytes.len() {
            let expected = base64::engine::general_purpose::STANDARD.encode(&bytes[..len]);
            assert_eq!(base64(&bytes[..len]), expected);
        }
    }

    #[test]
    fn base64url_agrees_with_the_base64_crate() {
        let bytes: Vec<u8> = (0..=255u8).rev().cycle().take(300).collect();
        for len in 0..bytes.len() {
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..len]);
            assert_eq!(base64url(&bytes[..len]), expected);
        }
    }

    #[test]
    fn urlencodes_both_parts() {
        let value = header_value("app id", "s&cret:x");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"app+id:s%26cret%3Ax");
    }
}
