//! Attachment encryption, with no IO: every file gets a fresh AES-256-GCM
//! key and nonce; the ciphertext goes to the server's blob store
//! (`POST /v1/blobs`) and the [`Attachment`] reference — blob id, key, nonce,
//! name, type, size and the plaintext's SHA-256 — travels inside the
//! MLS-encrypted post. Opening checks, in order: the blob's SHA-256 is its id
//! (the server handed back the blob that was referenced), the GCM tag (nobody
//! changed it), the plaintext's size and SHA-256 (the author's file).
//! Shared by the native client and the browser build.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use tsunagu_protocol::envelope::{ATTACHMENT_AAD, ATTACHMENT_ALG_AES_256_GCM};
use tsunagu_protocol::{Attachment, Bytes};

use crate::ClientError;

/// A file encrypted for upload: the ciphertext to `POST /v1/blobs`, and the
/// reference to put in the post once the server has stored it.
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    /// `blob_id` is already the SHA-256 of `ciphertext`; the server must
    /// answer with the same id.
    pub reference: Attachment,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file name without any directory part, at most 255 characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name).trim();
    let base = if base.is_empty() { "attachment" } else { base };
    base.chars().take(255).collect()
}

/// Encrypt a file with a fresh key and nonce.
pub fn seal(plaintext: &[u8], mime: &str, name: &str) -> Result<Sealed, ClientError> {
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut key);
    OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: ATTACHMENT_AAD })
        .map_err(|_| ClientError::Attachment("encryption failed".into()))?;
    let reference = Attachment {
        blob_id: sha256_hex(&ciphertext),
        alg: ATTACHMENT_ALG_AES_256_GCM.into(),
        key: Bytes(key.to_vec()),
        nonce: Bytes(nonce.to_vec()),
        mime: if mime.trim().is_empty() { "application/octet-stream".into() } else { mime.trim().into() },
        name: clean_name(name),
        size: plaintext.len() as u64,
        sha256: sha256_hex(plaintext),
        thumbnail: None,
    };
    Ok(Sealed { ciphertext, reference })
}

/// Decrypt a downloaded blob and check it against its reference.
pub fn open(reference: &Attachment, ciphertext: &[u8]) -> Result<Vec<u8>, ClientError> {
    if reference.alg != ATTACHMENT_ALG_AES_256_GCM {
        return Err(ClientError::Attachment(format!("unsupported cipher {:?}", reference.alg)));
    }
    if sha256_hex(ciphertext) != reference.blob_id {
        return Err(ClientError::Attachment("the blob's hash is not its id (changed or wrong blob)".into()));
    }
    if reference.key.as_slice().len() != 32 || reference.nonce.as_slice().len() != 12 {
        return Err(ClientError::Attachment("malformed key or nonce".into()));
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(reference.key.as_slice()));
    let plaintext = cipher
        .decrypt(Nonce::from_slice(reference.nonce.as_slice()), Payload { msg: ciphertext, aad: ATTACHMENT_AAD })
        .map_err(|_| ClientError::Attachment("the blob does not decrypt (changed, or not this attachment's)".into()))?;
    if plaintext.len() as u64 != reference.size || sha256_hex(&plaintext) != reference.sha256 {
        return Err(ClientError::Attachment("the decrypted file is not the one the author attached".into()));
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_keys() {
        let photo = b"\x89PNG\r\n\x1a\n fake image bytes MARKER-123";
        let a = seal(photo, "image/png", "/home/x/wound.png").unwrap();
        let b = seal(photo, "image/png", "wound.png").unwrap();
        assert_eq!(a.reference.name, "wound.png");
        assert_ne!(a.reference.key, b.reference.key, "a fresh key per file");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(10).any(|w| w == b"MARKER-123"));
        assert_eq!(open(&a.reference, &a.ciphertext).unwrap(), photo);
        assert_eq!(a.reference.sha256, sha256_hex(photo));
    }

    #[test]
    fn tampering_is_detected() {
        let s = seal(b"report text", "application/pdf", "r.pdf").unwrap();
        let mut bad = s.ciphertext.clone();
        bad[3] ^= 1;
        assert!(matches!(open(&s.reference, &bad), Err(ClientError::Attachment(_))));
        // A changed blob presented under its own new id: the tag fails.
        let mut forged = s.reference.clone();
        forged.blob_id = sha256_hex(&bad);
        assert!(matches!(open(&forged, &bad), Err(ClientError::Attachment(_))));
        // Another file's blob under this reference.
        let other = seal(b"other", "text/plain", "o.txt").unwrap();
        assert!(open(&s.reference, &other.ciphertext).is_err());
        // The wrong key.
        let mut wrong = s.reference.clone();
        wrong.key = other.reference.key.clone();
        assert!(open(&wrong, &s.ciphertext).is_err());
    }
}
