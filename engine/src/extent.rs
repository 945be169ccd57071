//! The engine's vocabulary for where data lives: runs of pool blocks, and
//! pieces of a volume's address space with what they map to.

/// A run of pool blocks `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Run {
    pub start: u64,
    pub len: u64,
}

impl Run {
    pub(crate) fn new(start: u64, len: u64) -> Self {
        Run { start, len }
    }

    pub(crate) fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Where the blocks of a mapped piece are: pool blocks `pstart..`, written
/// in generation `birth`, with one crc32 per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Data {
    pub pstart: u64,
    pub birth: u64,
    pub crcs: Vec<u32>,
}

/// A run of volume blocks `[vstart, vstart + len)` and what it maps to:
/// pool blocks, or nothing (a hole reads as zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub vstart: u64,
    pub len: u64,
    pub data: Option<Data>,
}

impl Piece {
    pub(crate) fn hole(vstart: u64, len: u64) -> Self {
        Piece {
            vstart,
            len,
            data: None,
        }
    }

    pub(crate) fn end(&self) -> u64 {
        self.vstart + self.len
    }

    /// The part of this piece inside `[from, to)`, if any.
    pub(crate) fn clip(&self, from: u64, to: u64) -> Option<Piece> {
        let (s, e) = (self.vstart.max(from), self.end().min(to));
        if s >= e {
            return None;
        }
        let skip = s - self.vstart;
        let len = e - s;
        Some(Piece {
            vstart: s,
            len,
            data: self.data.as_ref().map(|d| Data {
                pstart: d.pstart + skip,
                birth: d.birth,
                crcs: d.crcs[skip as usize..(skip + len) as usize].to_vec(),
            }),
        })
    }
}

/// Fills the gaps between sorted, disjoint `pieces` inside `[from, to)`
/// with holes, so the result covers the range exactly.
pub(crate) fn cover(from: u64, to: u64, pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out = Vec::with_capacity(pieces.len() * 2 + 1);
    let mut at = from;
    for p in pieces {
        debug_assert!(
            p.vstart >= at && p.end() <= to,
            "pieces sorted and in range"
        );
        if p.vstart > at {
            out.push(Piece::hole(at, p.vstart - at));
        }
        at = p.end();
        out.push(p);
    }
    if at < to {
        out.push(Piece::hole(at, to - at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_and_cover() {
        let p = Piece {
            vstart: 10,
            len: 4,
            data: Some(Data {
                pstart: 100,
                birth: 1,
                crcs: vec![1, 2, 3, 4],
            }),
        };
        let c = p.clip(11, 13).unwrap();
        assert_eq!((c.vstart, c.len), (11, 2));
        assert_eq!(
            c.data.unwrap(),
            Data {
                pstart: 101,
                birth: 1,
                crcs: vec![2, 3]
            }
        );
        assert!(p.clip(0, 10).is_none());
        let covered = cover(8, 16, vec![p]);
        let shape: Vec<_> = covered
            .iter()
            .map(|p| (p.vstart, p.len, p.data.is_some()))
            .collect();
        assert_eq!(shape, vec![(8, 2, false), (10, 4, true), (14, 2, false)]);
    }
}
