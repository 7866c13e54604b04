//! SOPS value encryption: AES-256-GCM with 32-byte IVs, written as
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` with standard padded base64.

use aes_gcm::AesGcm;
use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::SopsError;

/// AES-256-GCM with SOPS's 32-byte nonce.
type Cipher = AesGcm<Aes256, U32>;

/// The SOPS type tag of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `str`
    Str,
    /// `int`
    Int,
    /// `float`
    Float,
    /// `bool`
    Bool,
}

impl ValueType {
    fn tag(self) -> &'static str {
        match self {
            ValueType::Str => "str",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Bool => "bool",
        }
    }
}

/// Encrypts `plaintext` under `key` with `aad`.
pub fn encrypt(
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
    kind: ValueType,
) -> Result<String, SopsError> {
    let mut iv = [0u8; 32];
    getrandom::fill(&mut iv).map_err(|e| SopsError::Random(e.to_string()))?;
    let cipher = Cipher::new(&Array::from(*key));
    let sealed = cipher
        .encrypt(
            &Array::from(iv),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SopsError::Crypto("AES-GCM encryption failed".into()))?;
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{}]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag),
        kind.tag()
    ))
}

/// Whether a string is a SOPS-encrypted value.
pub fn is_encrypted(s: &str) -> bool {
    s.starts_with("ENC[AES256_GCM,") && s.ends_with(']')
}

/// Decrypts an `ENC[...]` value; returns the plaintext and its type tag.
pub fn decrypt(key: &[u8; 32], value: &str, aad: &[u8]) -> Result<(Vec<u8>, String), SopsError> {
    let bad = || SopsError::Format(format!("malformed encrypted value {value:.40}…"));
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(bad)?;
    let mut data = None;
    let mut iv = None;
    let mut tag = None;
    let mut kind = None;
    for part in inner.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(bad)?;
        match k {
            "data" => data = Some(STANDARD.decode(v).map_err(|_| bad())?),
            "iv" => iv = Some(STANDARD.decode(v).map_err(|_| bad())?),
            "tag" => tag = Some(STANDARD.decode(v).map_err(|_| bad())?),
            "type" => kind = Some(v.to_string()),
            _ => return Err(bad()),
        }
    }
    let (mut data, iv, tag, kind) = (
        data.ok_or_else(bad)?,
        iv.ok_or_else(bad)?,
        tag.ok_or_else(bad)?,
        kind.ok_or_else(bad)?,
    );
    let iv: [u8; 32] = iv.try_into().map_err(|_| bad())?;
    data.extend_from_slice(&tag);
    let cipher = Cipher::new(&Array::from(*key));
    let plain = cipher
        .decrypt(&Array::from(iv), Payload { msg: &data, aad })
        .map_err(|_| {
            SopsError::Integrity(
                "a value does not decrypt with the data key (tampered or wrong path)".into(),
            )
        })?;
    Ok((plain, kind))
}
