//! Identifier rules shared by client and server.
//!
//! Accounts, devices and timelines are named by lowercase UUID strings. A
//! device's MLS credential is a basic credential whose identity is the UTF-8 of
//! its device id; a timeline's MLS group id is the UTF-8 of its timeline id.
//! Message ids are chosen by the sending client.

/// Longest client-chosen message id.
pub const MAX_MSG_ID_LEN: usize = 64;

/// A message id is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_msg_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MSG_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Account, device and timeline ids are lowercase hyphenated UUIDs.
pub fn valid_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_ids() {
        assert!(valid_msg_id("a1_B-2"));
        assert!(!valid_msg_id(""));
        assert!(!valid_msg_id("has space"));
        assert!(!valid_msg_id(&"x".repeat(65)));
    }

    #[test]
    fn uuids() {
        assert!(valid_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!valid_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        assert!(!valid_uuid("0f8fad5b"));
    }
}
