//! Arbitrary bytes from a client, split into frames and decoded as requests,
//! the way the daemon reads its socket. Nothing a client sends may panic the
//! daemon: every outcome must be a frame, "need more bytes", or an error.

#![no_main]

use arca_proto::store::Request;
use arca_store::wire::{MAX_REQUEST_FRAME, RecvError, split_frame};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match split_frame(rest, MAX_REQUEST_FRAME) {
            Ok(Some((body, tail))) => {
                let announced = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(body.len(), announced, "body is not the announced length");
                assert_eq!(
                    4 + body.len() + tail.len(),
                    rest.len(),
                    "bytes lost or invented"
                );
                if let Ok(req) = Request::decode(body) {
                    // What the daemon decoded, re-encoded, is the same request.
                    let bytes = req.encode_to_vec();
                    assert_eq!(bytes.len(), req.encoded_len());
                    let again =
                        Request::decode(bytes.as_slice()).expect("re-encoded request decodes");
                    assert_eq!(again, req);
                }
                rest = tail;
            }
            Ok(None) => {
                // Only a short prefix or a body still in flight may ask for more.
                if let Some(prefix) = rest.get(..4) {
                    let announced = u32::from_le_bytes(prefix.try_into().unwrap()) as usize;
                    assert!(
                        announced > rest.len() - 4,
                        "a whole frame was not split off"
                    );
                }
                break;
            }
            Err(RecvError::TooLarge { len, max }) => {
                assert!(len > max);
                break;
            }
            Err(e) => panic!("split_frame failed with an error it should not produce: {e}"),
        }
    }
});
