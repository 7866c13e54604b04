//! The hello exchange: the receiver offers its protocol versions and features (a bandwidth
//! limit travels as `bwlimit=<bytes/s>`), the sender must answer with an overlapping range.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::pvc::PvcError;
use crate::pvc::wire::{self, Message};

/// Sends our hello and checks the sender's.
pub async fn hello<R, W>(rd: &mut R, wr: &mut W, bwlimit: Option<u64>) -> Result<(), PvcError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut features = vec![
        "sparse".to_string(),
        "hardlink".to_string(),
        wire::FEATURE_UNREADABLE.to_string(),
        wire::FEATURE_ROOT.to_string(),
    ];
    if let Some(rate) = bwlimit {
        features.push(format!("bwlimit={rate}"));
    }
    let ours = Message::Hello {
        min: wire::PROTOCOL_MIN,
        max: wire::PROTOCOL_MAX,
        features,
    };
    wire::write(wr, &ours).await?;
    wr.flush().await.map_err(wire::WireError::Io)?;
    match wire::read(rd).await? {
        Some(Message::Hello { min, max, .. })
            if min <= wire::PROTOCOL_MAX && max >= wire::PROTOCOL_MIN =>
        {
            Ok(())
        }
        Some(Message::Hello { min, max, .. }) => Err(PvcError::Protocol(format!(
            "sender speaks protocol versions {min}..={max}, this receiver {}..={}; run the same dr-syncer version on both sides",
            wire::PROTOCOL_MIN,
            wire::PROTOCOL_MAX
        ))),
        Some(Message::Error { message }) => Err(PvcError::Remote(message)),
        other => Err(PvcError::Protocol(format!("expected hello, got {other:?}"))),
    }
}
