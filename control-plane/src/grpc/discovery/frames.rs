//! Updates as bytes on the wire, encoded once and shared. A protobuf message is the
//! concatenation of its fields, and repeated fields met twice are appended: so the part of an
//! update that every proxy gets alike (workloads and Services added, changed or gone) is
//! encoded once per change as field bytes, cut into chunks of at most [`super::MESSAGE_BYTES`];
//! each stream then sends, per chunk, a gRPC frame made of a few bytes of its own (epoch,
//! versions, `full`, `more`, its inbound view, the bundle) followed by the shared chunk, which
//! is reference-counted, not copied. A full state for 2,000 proxies is encoded once and held
//! once, whatever the number of streams sending it.
//!
//! Owns: [`EncodedPart`] and [`frame`]. What goes in the fields is [`super::wire`]'s.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use trellis_proto::discovery::MeshUpdate;

use super::wire::GlobalPart;

/// Field numbers of `MeshUpdate`'s repeated fields (discovery.proto); a test checks them
/// against prost's own encoding.
const WORKLOADS: u32 = 5;
const REMOVED_WORKLOADS: u32 = 6;
const SERVICES: u32 = 7;
const REMOVED_SERVICES: u32 = 8;
/// Chunks up to this size are copied into their frame's first buffer (one DATA write);
/// larger ones go as their own, shared buffer.
const INLINE: usize = 16 * 1024;

/// The global part of one update as protobuf field bytes, in chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedPart {
    /// Replaces everything the proxy holds.
    pub full: bool,
    /// At least one chunk (empty when nothing changed for anyone); each at most the limit
    /// it was cut at, unless one entry alone is larger.
    pub chunks: Vec<Bytes>,
}

impl EncodedPart {
    /// Encodes `part`, removals first, cutting a new chunk before an entry that would take the
    /// current one past `limit` bytes.
    pub fn encode(part: &GlobalPart, limit: usize) -> EncodedPart {
        let mut cutter = Cutter {
            limit,
            done: Vec::new(),
            current: BytesMut::new(),
        };
        for w in &part.removed_workloads {
            cutter.field(
                |b| prost::encoding::message::encode(REMOVED_WORKLOADS, w, b),
                w.encoded_len(),
            );
        }
        for w in &part.workloads {
            cutter.field(
                |b| prost::encoding::message::encode(WORKLOADS, w, b),
                w.encoded_len(),
            );
        }
        for s in &part.removed_services {
            cutter.field(
                |b| prost::encoding::string::encode(REMOVED_SERVICES, s, b),
                s.len(),
            );
        }
        for s in &part.services {
            cutter.field(
                |b| prost::encoding::message::encode(SERVICES, s, b),
                s.encoded_len(),
            );
        }
        let mut chunks = cutter.done;
        if !cutter.current.is_empty() || chunks.is_empty() {
            chunks.push(cutter.current.freeze());
        }
        EncodedPart {
            full: part.full,
            chunks,
        }
    }

    /// Bytes in all chunks.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
}

/// Accumulates fields into chunks.
struct Cutter {
    limit: usize,
    done: Vec<Bytes>,
    current: BytesMut,
}

impl Cutter {
    /// Appends one field (`len`: its message's length, enough to decide the cut).
    fn field(&mut self, encode: impl FnOnce(&mut BytesMut), len: usize) {
        if !self.current.is_empty() && self.current.len() + len + 8 > self.limit {
            let full = std::mem::take(&mut self.current);
            self.done.push(full.freeze());
        }
        encode(&mut self.current);
    }
}

/// The gRPC frame of one message: the 5-byte prefix (not compressed, length), then `head`'s
/// fields, then `chunk`'s. One buffer when the chunk is small, else two (the second is `chunk`
/// itself, shared).
pub fn frame(head: &MeshUpdate, chunk: &Bytes) -> Vec<Bytes> {
    let head_len = head.encoded_len();
    let total = head_len + chunk.len();
    let inline = chunk.len() <= INLINE;
    let mut first = BytesMut::with_capacity(5 + head_len + if inline { chunk.len() } else { 0 });
    first.put_u8(0);
    // A chunk is at most MESSAGE_BYTES unless one entry alone is larger; a message past 4 GiB
    // cannot be framed and is cut at the prefix's limit (the proxy then reports it broken and
    // the stream resyncs; no source produces such an entry).
    first.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    head.encode_raw(&mut first);
    if inline {
        first.extend_from_slice(chunk);
        vec![first.freeze()]
    } else {
        vec![first.freeze(), chunk.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_proto::discovery::{Inbound, Service, Workload, WorkloadAddress};

    fn workload(last: u8) -> Workload {
        Workload {
            ip: vec![198, 18, 0, last],
            port: 0,
            spiffe_id: format!("spiffe://cluster.local/ns/shop/sa/w{last}"),
            tunnel: String::new(),
        }
    }

    fn part(n: u8) -> GlobalPart {
        GlobalPart {
            full: false,
            workloads: (1..=n).map(workload).collect(),
            removed_workloads: vec![WorkloadAddress {
                ip: vec![198, 18, 1, 1],
                port: 0,
            }],
            services: vec![Service {
                name: "shop/backend".into(),
                addresses: vec![vec![198, 19, 0, 10]],
                ports: vec![],
            }],
            removed_services: vec!["shop/old".into()],
        }
    }

    /// Decodes one frame as a proxy would.
    fn decode(frame: &[Bytes]) -> MeshUpdate {
        let bytes: Vec<u8> = frame.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5, "the prefix says the message's length");
        MeshUpdate::decode(&bytes[5..]).unwrap()
    }

    #[test]
    fn a_stream_head_and_a_shared_chunk_decode_as_one_update() {
        let part = part(3);
        let encoded = EncodedPart::encode(&part, 1 << 20);
        assert_eq!(encoded.chunks.len(), 1);
        let head = MeshUpdate {
            epoch: 7,
            version: 12,
            base_version: 11,
            inbound: Some(Inbound::default()),
            more: false,
            ..MeshUpdate::default()
        };
        let got = decode(&frame(&head, &encoded.chunks[0]));
        let want = MeshUpdate {
            workloads: part.workloads.clone(),
            removed_workloads: part.removed_workloads.clone(),
            services: part.services.clone(),
            removed_services: part.removed_services.clone(),
            ..head
        };
        assert_eq!(got, want);
    }

    #[test]
    fn large_parts_are_cut_into_chunks_within_the_limit_in_order() {
        let part = part(200);
        let one = EncodedPart::encode(&part, 1 << 20);
        let cut = EncodedPart::encode(&part, 1_000);
        assert!(cut.chunks.len() > 5, "{} chunks", cut.chunks.len());
        assert!(cut.chunks.iter().all(|c| c.len() <= 1_000));
        assert_eq!(cut.len(), one.len(), "cutting adds and drops nothing");
        let mut all = MeshUpdate::default();
        for c in &cut.chunks {
            all.merge(c.clone()).unwrap();
        }
        assert_eq!(all.workloads, part.workloads);
        assert_eq!(all.removed_services, part.removed_services);
        // Small chunks are copied into the frame; large ones travel as their own shared buffer.
        assert_eq!(frame(&MeshUpdate::default(), &one.chunks[0]).len(), 1);
        let many = GlobalPart {
            workloads: (0..1_000).map(|i| workload((i % 250) as u8)).collect(),
            ..GlobalPart::default()
        };
        let large = EncodedPart::encode(&many, 1 << 20);
        assert!(large.chunks[0].len() > INLINE);
        let big = frame(&MeshUpdate::default(), &large.chunks[0]);
        assert_eq!(big.len(), 2);
        assert_eq!(
            big[1].as_ptr(),
            large.chunks[0].as_ptr(),
            "shared, not copied"
        );
    }

    #[test]
    fn an_empty_part_is_one_empty_chunk() {
        let e = EncodedPart::encode(&GlobalPart::default(), 1_000);
        assert_eq!(e.chunks, vec![Bytes::new()]);
        assert_eq!(e.len(), 0);
    }
}
