//! Run-length encoding: the competition's known vectors, round trips (property tests) and the decoder's
//! checks.
use proptest::prelude::*;
use voc_submit::{
    decode_bits, decode_labels, decode_mask, encode_bits, encode_labels, encode_mask, parse_runs,
    ClassRuns, MaskView, RleError, Run, SubmitError,
};

fn mask(data: &[u8], h: usize, w: usize) -> MaskView<'_> {
    MaskView::new(data, h, w).unwrap()
}

#[test]
fn known_vectors() {
    let mut labels = [0u8; 20];
    labels[0] = 1;
    labels[5] = 1;
    assert_eq!(encode_labels(&labels).unwrap(), "1 1 6 1");
    assert_eq!(
        encode_mask(mask(&[0, 1, 2, 1], 2, 2)).unwrap(),
        "2 1 4 1 7 1"
    );
    assert_eq!(encode_labels(&[0; 20]).unwrap(), "");
    assert_eq!(encode_labels(&[1; 20]).unwrap(), "1 20");
    assert_eq!(encode_bits(&[true, true, false, true]), "1 2 4 1");
}

#[test]
fn void_is_background() {
    assert_eq!(
        encode_mask(mask(&[255, 1, 255, 1], 2, 2)).unwrap(),
        "2 1 4 1"
    );
    assert_eq!(encode_mask(mask(&[255; 6], 2, 3)).unwrap(), "");
}

#[test]
fn runs_merge_across_channel_planes() {
    // Class 1 ends plane 0 and class 2 starts plane 1: in the flattened stack they are one run of ones,
    // which numpy's encoder writes as one run.
    assert_eq!(encode_mask(mask(&[2, 0, 0, 1], 2, 2)).unwrap(), "4 2");
    assert_eq!(decode_mask("4 2", 2, 2).unwrap(), vec![2, 0, 0, 1]);
    // A whole-image class followed by the next class covering the whole image cannot happen in one mask,
    // but a full plane of class 20 ends exactly at the end of the stack.
    assert_eq!(encode_mask(mask(&[20; 4], 2, 2)).unwrap(), "77 4");
}

#[test]
fn long_runs_cross_word_boundaries() {
    // Runs that end at every offset within an 8-byte word and past it, checked against bit by bit.
    for len in 0..40 {
        for offset in 0..10 {
            let mut data = vec![0u8; 64];
            data[offset..offset + len].fill(3);
            let expected: Vec<bool> = (0..20 * 64)
                .map(|i| i / 64 == 2 && data[i % 64] == 3)
                .collect();
            assert_eq!(
                encode_mask(mask(&data, 8, 8)).unwrap(),
                encode_bits(&expected),
                "len {len} offset {offset}"
            );
        }
    }
}

#[test]
fn bad_mask_values_are_errors() {
    let err = encode_mask(mask(&[0, 0, 0, 21], 2, 2)).unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::BadMaskValue {
                value: 21,
                row: 1,
                column: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("255 (void"), "{err}");
    assert!(encode_mask(mask(&[254], 1, 1)).is_err());
    assert!(encode_mask(mask(&[20], 1, 1)).is_ok());
}

#[test]
fn bad_labels_and_sizes_are_errors() {
    let mut labels = [0u8; 20];
    labels[3] = 2;
    let err = encode_labels(&labels).unwrap_err();
    assert!(err.to_string().contains("label 3 (boat) is 2"), "{err}");
    assert!(matches!(
        encode_labels(&[0; 19]),
        Err(SubmitError::SizeMismatch {
            expected: 20,
            actual: 19,
            ..
        })
    ));
    let err = MaskView::new(&[0; 5], 2, 3).unwrap_err();
    assert!(
        err.to_string().contains("expected 6 values, got 5"),
        "{err}"
    );
}

#[test]
fn decoder_checks_every_rule() {
    assert_eq!(parse_runs("", 10).unwrap(), vec![]);
    assert_eq!(
        parse_runs("1 2 5 1", 10).unwrap(),
        vec![Run { start: 0, len: 2 }, Run { start: 4, len: 1 }]
    );
    assert_eq!(
        parse_runs("1 2 3 1", 10).unwrap().len(),
        2,
        "touching runs do not overlap"
    );
    assert_eq!(
        parse_runs("1 2 3", 10),
        Err(RleError::OddCount { count: 3 })
    );
    assert_eq!(
        parse_runs("1  2", 10),
        Err(RleError::EmptyValue { value: 2 })
    );
    assert_eq!(
        parse_runs(" 1 2", 10),
        Err(RleError::EmptyValue { value: 1 })
    );
    assert_eq!(
        parse_runs("1 2 ", 10),
        Err(RleError::EmptyValue { value: 3 })
    );
    assert!(matches!(
        parse_runs("1 -2", 10),
        Err(RleError::NotANumber { value: 2, .. })
    ));
    assert!(matches!(
        parse_runs("1 x", 10),
        Err(RleError::NotANumber { value: 2, .. })
    ));
    assert!(matches!(
        parse_runs("1 99999999999999999999999", 10),
        Err(RleError::NotANumber { .. })
    ));
    assert_eq!(parse_runs("0 2", 10), Err(RleError::ZeroStart { run: 1 }));
    assert_eq!(
        parse_runs("3 0", 10),
        Err(RleError::ZeroLength { run: 1, start: 3 })
    );
    assert!(matches!(
        parse_runs("5 2 3 1", 10),
        Err(RleError::NotIncreasing { run: 2, .. })
    ));
    assert!(matches!(
        parse_runs("1 3 2 1", 10),
        Err(RleError::NotIncreasing { run: 2, .. })
    ));
    assert!(matches!(
        parse_runs("9 3", 10),
        Err(RleError::PastEnd {
            run: 1,
            end: 11,
            size: 10,
            ..
        })
    ));
    assert!(parse_runs("9 2", 10).is_ok());
    assert!(parse_runs(&format!("1 {}", u64::MAX), 10).is_err());
    let err = parse_runs("2 1 1 1", 10).unwrap_err();
    assert!(err.to_string().contains("run 2 starts at 1"), "{err}");
}

#[test]
fn decoding_overlapping_channels_into_a_mask_is_an_error() {
    // Pixel 0 is set in channel 0 (positions 1..4) and channel 1 (positions 5..8).
    let err = decode_mask("1 1 5 1", 2, 2).unwrap_err();
    assert!(err.to_string().contains("row 0, column 0"), "{err}");
    assert!(decode_mask("1 1 6 1", 2, 2).is_ok());
}

#[test]
fn labels_round_trip() {
    let labels: [u8; 20] = std::array::from_fn(|i| (i % 3 == 0) as u8);
    assert_eq!(
        decode_labels(&encode_labels(&labels).unwrap()).unwrap(),
        labels
    );
    assert!(decode_labels("20 2").is_err());
}

/// A mask of the given pattern: values drawn from classes 0..=20 plus void.
fn mask_strategy() -> impl Strategy<Value = (usize, usize, Vec<u8>)> {
    (1usize..24, 1usize..24).prop_flat_map(|(h, w)| {
        let value = prop_oneof![
            4 => Just(0u8),
            2 => 1u8..=20,
            1 => Just(255u8),
        ];
        let random = prop::collection::vec(value, h * w).boxed();
        let special = prop_oneof![
            Just(vec![0u8; h * w]),
            Just(vec![1u8; h * w]),
            (1u8..=20).prop_map(move |c| vec![c; h * w]),
            (1u8..=20)
                .prop_map(move |c| (0..h * w).map(|i| if i % 2 == 0 { c } else { 0 }).collect()),
            (1u8..=20, 1u8..=20).prop_map(move |(a, b)| (0..h * w)
                .map(|i| if (i / w + i % w) % 2 == 0 { a } else { b })
                .collect()),
        ]
        .boxed();
        (Just(h), Just(w), prop_oneof![3 => random, 1 => special])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mask_round_trip((h, w, data) in mask_strategy()) {
        let rle = encode_mask(MaskView::new(&data, h, w).unwrap()).unwrap();
        let expected: Vec<u8> = data.iter().map(|&v| if v == 255 { 0 } else { v }).collect();
        prop_assert_eq!(decode_mask(&rle, h, w).unwrap(), expected);
        // The text is the canonical encoding of the 20xHxW stack, compared against bit-by-bit encoding.
        let stack: Vec<bool> = (0..20 * h * w).map(|i| data[i % (h * w)] as usize == i / (h * w) + 1).collect();
        prop_assert_eq!(&rle, &encode_bits(&stack));
        prop_assert_eq!(decode_bits(&rle, stack.len()).unwrap(), stack);
    }

    #[test]
    fn bits_round_trip(bits in prop::collection::vec(any::<bool>(), 0..300)) {
        let rle = encode_bits(&bits);
        prop_assert_eq!(decode_bits(&rle, bits.len()).unwrap(), bits);
    }

    #[test]
    fn class_runs_round_trip_through_the_stack((h, w, data) in mask_strategy()) {
        let runs = ClassRuns::from_mask(MaskView::new(&data, h, w).unwrap()).unwrap();
        let stack: Vec<Run> = runs.stack_runs().collect();
        prop_assert_eq!(ClassRuns::from_stack_runs(&stack, (h * w) as u64).unwrap(), runs);
    }

    #[test]
    fn decoder_never_panics(text in "[0-9 ]{0,30}", size in 0u64..100) {
        let _ = parse_runs(&text, size);
        let _ = decode_mask(&text, 2, 3);
    }
}
