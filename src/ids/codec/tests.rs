use super::*;
use crate::ids::testing::stream;

#[test]
fn serialization_round_trips() {
    let sets = [
        IdSet::new(),
        IdSet::from_ids([i64::MIN, -5, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]),
        IdSet::from_ids(stream(77).take(20_000).map(|k| k as i64)),
        IdSet::from_ids(0..50_000),
    ];
    for set in sets {
        let mut bytes = Vec::new();
        set.serialize_into(&mut bytes);
        assert_eq!(bytes.len(), set.serialized_size());
        assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
    }
    assert_eq!(IdSet::deserialize(&[]).unwrap(), IdSet::new());
}

#[test]
fn parts_are_bounded_and_add_up_to_the_set() {
    let set = IdSet::from_ids(
        stream(5)
            .take(30_000)
            .map(|k| k as i64)
            .chain(0..20_000)
            .chain([i64::MIN, i64::MAX]),
    );
    for max in [HEADER_BYTES + MAX_SEGMENT_BYTES, 50_000, 1 << 20] {
        let parts = set.serialize_parts(max);
        assert!(parts.iter().all(|p| p.len() <= max), "max {max}");
        let sets: Vec<IdSet> = parts
            .iter()
            .map(|p| IdSet::deserialize(p).unwrap())
            .collect();
        assert_eq!(IdSet::union_all(sets), set, "max {max}");
    }
    assert_eq!(
        set.serialize_parts(1 << 20).len(),
        1,
        "small enough for one"
    );
    assert!(IdSet::new().serialize_parts(1 << 20).is_empty());
}

#[test]
fn a_roaring_treemap_is_not_an_id_set() {
    // Roaring's portable treemap format, whatever it holds, is refused unread.
    let mut tree = roaring::RoaringTreemap::new();
    tree.insert_range(0..2u64 << 32);
    tree.optimize();
    let mut bytes = Vec::new();
    tree.serialize_into(&mut bytes).unwrap();
    assert_eq!(IdSet::deserialize(&bytes), Err(DecodeError::Magic));
}

#[test]
fn random_64_bit_ids_serialize_well_under_ten_bytes_each() {
    let set = IdSet::from_ids(stream(1234).take(100_000).map(|k| k as i64));
    let per_id = set.serialized_size() as f64 / set.len() as f64;
    assert!(per_id < 8.0, "{per_id} bytes per id");
}

#[test]
fn malformed_bytes_are_refused_without_panicking() {
    let mut good = Vec::new();
    IdSet::from_ids([1, 5, 1 << 50]).serialize_into(&mut good);
    for cut in 0..good.len() {
        assert!(
            IdSet::deserialize(&good[..cut]).is_err() || cut == 0,
            "cut {cut}"
        );
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(IdSet::deserialize(&trailing), Err(DecodeError::Trailing(1)));
    let mut version = good.clone();
    version[4] = 9;
    assert_eq!(IdSet::deserialize(&version), Err(DecodeError::Version(9)));
    let mut count = good.clone();
    count[8] = 4;
    assert_eq!(IdSet::deserialize(&count), Err(DecodeError::Count));
    // A block that claims more blocks than the bytes can hold allocates nothing.
    let mut blocks = good.clone();
    blocks[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(IdSet::deserialize(&blocks), Err(DecodeError::Truncated));
    // A gap that would wrap past u64::MAX.
    let mut wrap = Vec::new();
    wrap.extend_from_slice(MAGIC);
    wrap.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    wrap.extend_from_slice(&2u64.to_le_bytes());
    wrap.extend_from_slice(&1u32.to_le_bytes());
    wrap.push(KIND_PACKED);
    wrap.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    wrap.extend_from_slice(&2u32.to_le_bytes());
    wrap.push(64);
    wrap.extend_from_slice(&5u64.to_le_bytes());
    assert_eq!(IdSet::deserialize(&wrap), Err(DecodeError::Order));
    // Blocks out of order.
    let a = IdSet::from_ids([10]);
    let b = IdSet::from_ids([5]);
    let mut two = IdSet::new();
    two.push_block(a.blocks[0].clone());
    two.blocks.push(b.blocks[0].clone());
    two.len += 1;
    let mut bytes = Vec::new();
    two.serialize_into(&mut bytes);
    assert_eq!(IdSet::deserialize(&bytes), Err(DecodeError::Order));
    assert_eq!(IdSet::deserialize(b"garbage!"), Err(DecodeError::Magic));
    let mut kind = good.clone();
    kind[20] = 7;
    assert_eq!(IdSet::deserialize(&kind), Err(DecodeError::Kind(7)));
}

#[test]
fn dense_runs_ship_as_roaring_bitmaps_and_everything_else_as_blocks() {
    // A million consecutive ids, a run elsewhere, and scattered ids around them.
    let ids: Vec<i64> = (0..1_000_000)
        .chain(5_000_000_000..5_000_010_000)
        .chain(stream(8).take(1000).map(|k| k as i64))
        .collect();
    let set = IdSet::from_ids(ids.iter().copied());
    let kinds: Vec<u8> = set
        .segments()
        .map(|s| match s {
            Segment::Packed(_) => KIND_PACKED,
            Segment::Dense(..) => KIND_DENSE,
        })
        .collect();
    assert_eq!(kinds.iter().filter(|&&k| k == KIND_DENSE).count(), 2);
    assert!(kinds.contains(&KIND_PACKED));
    let mut bytes = Vec::new();
    set.serialize_into(&mut bytes);
    assert_eq!(bytes.len(), set.serialized_size());
    assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
    // The million consecutive ids take a few hundred bytes, not 245 block headers.
    let run = IdSet::from_ids(0..1_000_000);
    assert!(run.serialized_size() < 400, "{}", run.serialized_size());
}

#[test]
fn a_set_larger_than_allowed_is_refused_before_it_is_expanded() {
    let run = IdSet::from_ids(0..1_000_000);
    let mut bytes = Vec::new();
    run.serialize_into(&mut bytes);
    assert_eq!(
        IdSet::deserialize_bounded(&bytes, 999_999),
        Err(DecodeError::TooMany(1_000_000))
    );
    assert_eq!(IdSet::deserialize_bounded(&bytes, 1_000_000).unwrap(), run);
    // A declared count below what the segments hold stops the expansion too.
    let mut lying = bytes.clone();
    lying[8..16].copy_from_slice(&10u64.to_le_bytes());
    assert_eq!(IdSet::deserialize(&lying), Err(DecodeError::Count));
}

#[test]
fn blocks_of_consecutive_keys_decode_without_walking_them() {
    let set = IdSet::from_ids(-5_000..1_000_000);
    let mut bytes = Vec::new();
    set.serialize_into(&mut bytes);
    assert!(set.blocks.iter().all(|b| b.width == 0));
    assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
    // A width-0 block whose last key would pass u64::MAX.
    let mut wrap = Vec::new();
    wrap.extend_from_slice(MAGIC);
    wrap.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    wrap.extend_from_slice(&4096u64.to_le_bytes());
    wrap.extend_from_slice(&1u32.to_le_bytes());
    wrap.push(KIND_PACKED);
    wrap.extend_from_slice(&(u64::MAX - 10).to_le_bytes());
    wrap.extend_from_slice(&4096u32.to_le_bytes());
    wrap.push(0);
    assert_eq!(IdSet::deserialize(&wrap), Err(DecodeError::Order));
}

/// One dense segment of the keys `high << 32 | low` for each `low` in `ranges`, as a
/// whole set in the compact format.
fn dense(high: u32, ranges: &[std::ops::RangeInclusive<u32>]) -> Vec<u8> {
    let mut bitmap = roaring::RoaringBitmap::new();
    for r in ranges {
        bitmap.insert_range(r.clone());
    }
    bitmap.optimize();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    bytes.extend_from_slice(&bitmap.len().to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(KIND_DENSE);
    bytes.extend_from_slice(&high.to_le_bytes());
    bytes.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
    bitmap.serialize_into(&mut bytes).unwrap();
    bytes
}

#[test]
fn dense_runs_of_every_length_decode_to_their_ids() {
    // Runs shorter than, as long as and longer than a block, next to each other.
    let ranges = [
        0..=0,
        2..=4096,
        5000..=9095,
        9097..=13193,
        20_000..=40_000,
        u32::MAX - 5..=u32::MAX,
    ];
    let set = IdSet::deserialize(&dense(7, &ranges)).unwrap();
    let ids = ranges
        .iter()
        .flat_map(|r| r.clone())
        .map(|low| crate::ids::from_key(7 << 32 | u64::from(low)));
    assert_eq!(set, IdSet::from_ids(ids));
    assert!(set.blocks.iter().all(|b| b.len as usize <= BLOCK_KEYS));
}

#[test]
fn runs_that_end_at_the_last_key_decode_to_their_ids() {
    // Keys up to u64::MAX (the id i64::MAX): counting on past the last key would wrap.
    for ranges in [
        vec![u32::MAX - 5..=u32::MAX],
        vec![0..=0, u32::MAX..=u32::MAX],
        vec![u32::MAX - 10_000..=u32::MAX],
    ] {
        let bytes = dense(u32::MAX, &ranges);
        let set = IdSet::deserialize(&bytes).unwrap();
        let keys: Vec<u64> = ranges
            .iter()
            .flat_map(|r| r.clone())
            .map(|low| u64::from(u32::MAX) << 32 | u64::from(low))
            .collect();
        assert_eq!(set.keys().collect::<Vec<_>>(), keys);
        let mut flat = Vec::new();
        assert_eq!(
            IdSet::deserialize_keys_into(&bytes, u64::MAX, &mut flat),
            Ok(keys.len() as u64)
        );
        assert_eq!(flat, keys);
    }
    assert!(IdSet::from_ids([i64::MAX - 1, i64::MAX]).contains(i64::MAX));
}

#[test]
fn declared_len_reads_the_header_alone() {
    let mut bytes = Vec::new();
    IdSet::from_ids(0..1000).serialize_into(&mut bytes);
    assert_eq!(IdSet::declared_len(&bytes), Ok(1000));
    assert_eq!(
        IdSet::declared_len(&bytes[..16]),
        Ok(1000),
        "the rest is not read"
    );
    assert_eq!(IdSet::declared_len(&[]), Ok(0));
    assert_eq!(IdSet::declared_len(b"garbage!"), Err(DecodeError::Magic));
    assert_eq!(
        IdSet::declared_len(&bytes[..10]),
        Err(DecodeError::Truncated)
    );
    let mut version = bytes.clone();
    version[4] = 3;
    assert_eq!(IdSet::declared_len(&version), Err(DecodeError::Version(3)));
}

#[test]
fn keys_decode_into_a_buffer_as_the_set_holds_them_or_not_at_all() {
    let sets = [
        IdSet::from_ids([i64::MIN, -5, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]),
        IdSet::from_ids(stream(77).take(20_000).map(|k| k as i64)),
        IdSet::from_ids((0..50_000).chain(stream(3).take(500).map(|k| k as i64))),
        IdSet::from_ids(stream(9).take(5000).map(|k| (k >> 40) as i64)),
    ];
    for set in sets {
        let mut bytes = Vec::new();
        set.serialize_into(&mut bytes);
        let mut out = vec![42];
        assert_eq!(
            IdSet::deserialize_keys_into(&bytes, set.len(), &mut out),
            Ok(set.len())
        );
        assert_eq!(out[0], 42);
        assert!(out[1..].iter().copied().eq(set.keys()));
        // Over the bound, or cut anywhere: nothing is appended.
        let mut out = vec![42];
        assert_eq!(
            IdSet::deserialize_keys_into(&bytes, set.len() - 1, &mut out),
            Err(DecodeError::TooMany(set.len()))
        );
        for cut in [bytes.len() - 1, bytes.len() / 2, 30] {
            assert!(IdSet::deserialize_keys_into(&bytes[..cut], u64::MAX, &mut out).is_err());
            assert_eq!(out, [42]);
        }
    }
    // A gap that would wrap past u64::MAX.
    let mut wrap = Vec::new();
    wrap.extend_from_slice(MAGIC);
    wrap.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    wrap.extend_from_slice(&2u64.to_le_bytes());
    wrap.extend_from_slice(&1u32.to_le_bytes());
    wrap.push(KIND_PACKED);
    wrap.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    wrap.extend_from_slice(&2u32.to_le_bytes());
    wrap.push(64);
    wrap.extend_from_slice(&5u64.to_le_bytes());
    let mut out = Vec::new();
    assert_eq!(
        IdSet::deserialize_keys_into(&wrap, 10, &mut out),
        Err(DecodeError::Order)
    );
    assert!(out.is_empty());
}

#[test]
fn a_long_run_decodes_to_whole_blocks_without_walking_its_ids() {
    // 2^28 consecutive ids in a few bytes: made block by block (walking them one by one
    // took minutes in a debug build).
    let bytes = dense(u32::MAX, &[0..=(1 << 28) - 1]);
    assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
    let set = IdSet::deserialize(&bytes).unwrap();
    assert_eq!(set.len(), 1 << 28);
    assert_eq!(set.blocks.len(), (1 << 28) / BLOCK_KEYS);
    assert!(set.blocks.iter().all(|b| b.width == 0 && b.gaps.is_empty()));
    assert_eq!(set.keys().next(), Some(u64::from(u32::MAX) << 32));
    assert_eq!(
        set.blocks.last().unwrap().last,
        (u64::from(u32::MAX) << 32) + (1 << 28) - 1
    );
}

#[test]
fn runs_decode_to_the_blocks_that_id_by_id_building_makes() {
    // Runs of every short length with gaps of every width between them: filling the
    // open block with zero gaps in bulk must cut blocks where pushing each id does.
    let mut ranges = Vec::new();
    let mut low = 3u32;
    for n in 0..600u32 {
        let len = (n * 37) % 700 + 1;
        ranges.push(low..=low + len - 1);
        low += len + 1 + (n * n) % 5000;
    }
    let set = IdSet::deserialize(&dense(1, &ranges)).unwrap();
    let keys: Vec<u64> = ranges
        .iter()
        .flat_map(|r| r.clone())
        .map(|low| 1 << 32 | u64::from(low))
        .collect();
    let mut by_key = Builder::default();
    for &k in &keys {
        by_key.push(k);
    }
    let by_key = by_key.into_set();
    let shape = |s: &IdSet| -> Vec<(u64, u64, u32, u8)> {
        s.blocks
            .iter()
            .map(|b| (b.first, b.last, b.len, b.width))
            .collect()
    };
    assert_eq!(shape(&set), shape(&by_key));
    assert_eq!(set, by_key);
}

#[test]
fn runs_that_keep_under_the_id_bound_but_not_its_memory_are_refused_while_built() {
    // Runs of 4095 ids one apart: under the bound of ids a 1 MiB budget could hold at
    // their densest, but at about 7 ids a byte they would take over 10 MiB. Decoding stops
    // at the memory the bound stands for instead of building them all.
    let max_ids = (1u64 << 20) * DENSEST_IDS_PER_BYTE;
    let ranges: Vec<_> = (0..20_000u32).map(|n| n * 4096..=n * 4096 + 4094).collect();
    let bytes = dense(2, &ranges);
    let len = 20_000 * 4095;
    assert!(len < max_ids);
    assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
    let max_heap = max_ids / DENSEST_IDS_PER_BYTE + HEAP_SLACK_BYTES;
    assert_eq!(
        IdSet::deserialize_bounded(&bytes, max_ids),
        Err(DecodeError::TooLarge(max_heap))
    );
    // The same runs fit a bound twenty times as large.
    assert_eq!(
        IdSet::deserialize_bounded(&bytes, max_ids * 20).map(|s| s.len()),
        Ok(len)
    );
}
