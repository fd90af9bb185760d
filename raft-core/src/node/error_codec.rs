//! Errors on the wire: a node's [`Error`] as an [`ErrorReply`] and back, keeping what the
//! error means for the request (not applied, maybe applied, ...).

use std::time::Duration;

use crate::error::{Error, Fatal, MaybeApplied, NotApplied};
use crate::wire::{ErrorCode, ErrorReply};

/// Encodes an error for a remote caller.
pub(crate) fn error_to_wire(e: &Error) -> ErrorReply {
    let (code, leader_id, leader_addr) = match e {
        Error::NotLeader {
            leader_id,
            leader_addr,
        } => (
            ErrorCode::NotLeader,
            leader_id.unwrap_or(0),
            leader_addr.clone().unwrap_or_default(),
        ),
        Error::NotApplied(NotApplied::NoLeader(_)) => (ErrorCode::NotLeader, 0, String::new()),
        Error::NotApplied(NotApplied::MembershipBusy) => {
            (ErrorCode::MembershipBusy, 0, String::new())
        }
        Error::NotApplied(NotApplied::Busy(_)) => (ErrorCode::Busy, 0, String::new()),
        Error::NotApplied(NotApplied::SessionExpired) => {
            (ErrorCode::SessionExpired, 0, String::new())
        }
        Error::NotApplied(NotApplied::SupersededInSession) => {
            (ErrorCode::SupersededInSession, 0, String::new())
        }
        Error::NotApplied(NotApplied::OtherCluster(_)) => {
            (ErrorCode::OtherCluster, 0, String::new())
        }
        Error::NotApplied(_) => (ErrorCode::Dropped, 0, String::new()),
        Error::MaybeApplied(MaybeApplied::Timeout(_)) => (ErrorCode::Timeout, 0, String::new()),
        Error::MaybeApplied(MaybeApplied::AnswerNotKept) => {
            (ErrorCode::AnswerNotKept, 0, String::new())
        }
        Error::MaybeApplied(_) => (ErrorCode::UnknownOutcome, 0, String::new()),
        Error::Store(_) => (ErrorCode::Store, 0, String::new()),
        Error::Invalid(_) => (ErrorCode::Invalid, 0, String::new()),
        Error::Fatal(Fatal::Shutdown) => (ErrorCode::Shutdown, 0, String::new()),
        Error::Fatal(_) => (ErrorCode::Internal, 0, String::new()),
    };
    let message = match e {
        Error::Store(m) => m.message().to_string(),
        Error::Invalid(m)
        | Error::NotApplied(NotApplied::Busy(m) | NotApplied::OtherCluster(m)) => m.clone(),
        other => other.to_string(),
    };
    ErrorReply {
        code: code as i32,
        message,
        leader_id,
        leader_addr,
    }
}

/// Decodes a remote node's error.
pub(crate) fn error_from_wire(e: ErrorReply) -> Error {
    match ErrorCode::try_from(e.code) {
        Ok(ErrorCode::NotLeader) => Error::NotLeader {
            leader_id: (e.leader_id != 0).then_some(e.leader_id),
            leader_addr: (!e.leader_addr.is_empty()).then_some(e.leader_addr),
        },
        Ok(ErrorCode::Timeout) => Error::timeout(Duration::ZERO),
        Ok(ErrorCode::Dropped) => Error::dropped(),
        Ok(ErrorCode::UnknownOutcome) => Error::leadership_lost(),
        Ok(ErrorCode::Store) => Error::store(e.message),
        Ok(ErrorCode::Invalid) => Error::Invalid(e.message),
        Ok(ErrorCode::MembershipBusy) => Error::membership_busy(),
        Ok(ErrorCode::Busy) => Error::busy(e.message),
        Ok(ErrorCode::SessionExpired) => Error::NotApplied(NotApplied::SessionExpired),
        Ok(ErrorCode::SupersededInSession) => Error::NotApplied(NotApplied::SupersededInSession),
        Ok(ErrorCode::OtherCluster) => Error::NotApplied(NotApplied::OtherCluster(e.message)),
        Ok(ErrorCode::AnswerNotKept) => Error::applied_answer_not_kept(),
        Ok(ErrorCode::Shutdown) => Error::remote(format!("remote node stopped: {}", e.message)),
        Ok(ErrorCode::Internal) | Err(_) => Error::remote(e.message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire_with_their_meaning() {
        let cases = [
            Error::NotLeader {
                leader_id: Some(3),
                leader_addr: Some("node-3".into()),
            },
            Error::dropped(),
            Error::leadership_lost(),
            Error::store("bad command"),
            Error::Invalid("no".into()),
            Error::membership_busy(),
            Error::busy("full"),
            Error::NotApplied(NotApplied::OtherCluster("cluster id mismatch".into())),
            Error::timeout(Duration::from_secs(1)),
            Error::NotApplied(NotApplied::SessionExpired),
            Error::NotApplied(NotApplied::SupersededInSession),
            Error::applied_answer_not_kept(),
        ];
        for e in cases {
            let back = error_from_wire(error_to_wire(&e));
            // The same outcome: not applied, maybe applied, store error...
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e} -> {back}"
            );
        }
        assert!(matches!(
            error_from_wire(error_to_wire(&Error::NotApplied(
                NotApplied::SessionExpired
            ))),
            Error::NotApplied(NotApplied::SessionExpired)
        ));
        assert!(matches!(
            error_from_wire(error_to_wire(&Error::applied_answer_not_kept())),
            Error::MaybeApplied(MaybeApplied::AnswerNotKept)
        ));
        match error_from_wire(error_to_wire(&Error::NotApplied(NotApplied::OtherCluster(
            "cluster id mismatch: node 3".into(),
        )))) {
            Error::NotApplied(NotApplied::OtherCluster(m)) => {
                assert_eq!(m, "cluster id mismatch: node 3")
            }
            other => panic!("{other}"),
        }
        match error_from_wire(error_to_wire(&Error::NotLeader {
            leader_id: Some(3),
            leader_addr: Some("node-3".into()),
        })) {
            Error::NotLeader {
                leader_id: Some(3),
                leader_addr: Some(a),
            } => assert_eq!(a, "node-3"),
            other => panic!("{other}"),
        }
        let unknown = ErrorReply {
            code: 999,
            message: "future".into(),
            ..Default::default()
        };
        assert!(
            matches!(error_from_wire(unknown), Error::MaybeApplied(_)),
            "unknown codes are unknown outcomes"
        );
    }
}
