//! Reading photos of every supported format, and refusing what is not an RGB image.
use voc_data::read_rgb_image;

#[test]
fn images_that_are_not_hxwx3_uint8_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let missing = dir.join("missing.png");
    assert!(read_rgb_image(&missing)
        .unwrap_err()
        .to_string()
        .contains("missing file"));

    let mask = dir.join("mask.npy");
    ndarray_npy::write_npy(&mask, &ndarray::Array2::<u8>::zeros((4, 5))).unwrap();
    let msg = read_rgb_image(&mask).unwrap_err().to_string();
    assert!(
        msg.contains("mask.npy") && msg.contains("(H, W, 3)"),
        "{msg}"
    );

    let floats = dir.join("floats.npy");
    ndarray_npy::write_npy(&floats, &ndarray::Array3::<f32>::zeros((4, 5, 3))).unwrap();
    let msg = read_rgb_image(&floats).unwrap_err().to_string();
    assert!(msg.contains("floats.npy") && msg.contains("uint8"), "{msg}");

    let rgba = dir.join("four.npy");
    ndarray_npy::write_npy(&rgba, &ndarray::Array3::<u8>::zeros((4, 5, 4))).unwrap();
    let msg = read_rgb_image(&rgba).unwrap_err().to_string();
    assert!(
        msg.contains("four.npy") && msg.contains("[4, 5, 4]"),
        "{msg}"
    );

    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(read_rgb_image(&text)
        .unwrap_err()
        .to_string()
        .contains("unknown image type"));
    let fake_png = dir.join("fake.png");
    std::fs::write(&fake_png, "not a png").unwrap();
    assert!(read_rgb_image(&fake_png)
        .unwrap_err()
        .to_string()
        .contains("cannot decode"));
}
