//! Pixels to network inputs and back, on tensors: [`voc_core::Normalization`] applied to `N x 3 x H x W`
//! batches on any device.
use candle_core::{DType, Tensor};
use voc_core::Normalization;

use crate::error::{Result, VocError};

/// Applies per-channel `x * scale + offset` to an `N x 3 x H x W` f32 tensor: one scalar affine map
/// when every channel shares it (bit for bit `x.affine`), a broadcast multiply-add otherwise.
fn channel_affine(x: &Tensor, scale_offset: [(f32, f32); 3], uniform: bool) -> Result<Tensor> {
    if uniform {
        let (scale, offset) = scale_offset[0];
        return Ok(x.affine(scale as f64, offset as f64)?);
    }
    if x.rank() != 4 || x.dim(1)? != 3 {
        return Err(VocError::BadArgument(format!(
            "per-channel normalisation wants an N x 3 x H x W batch, got shape {:?}",
            x.dims()
        )));
    }
    let scale =
        Tensor::from_iter(scale_offset.map(|(s, _)| s), x.device())?.reshape((1, 3, 1, 1))?;
    let offset =
        Tensor::from_iter(scale_offset.map(|(_, o)| o), x.device())?.reshape((1, 3, 1, 1))?;
    Ok(x.broadcast_mul(&scale)?.broadcast_add(&offset)?)
}

/// Normalises `N x 3 x H x W` pixel values in 0..255 (any float or integer dtype) to f32 network inputs.
pub fn normalize(pixels: &Tensor, normalization: &Normalization) -> Result<Tensor> {
    let x = pixels.to_dtype(DType::F32)?;
    channel_affine(&x, normalization.scale_offset(), normalization.is_uniform())
}

/// The inverse of [`normalize`]: network inputs back to 0..255 pixel values (f32, not rounded).
pub fn denormalize(inputs: &Tensor, normalization: &Normalization) -> Result<Tensor> {
    channel_affine(
        inputs,
        normalization.inverse_scale_offset(),
        normalization.is_uniform(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minus_one_to_one_is_the_scalar_map_bit_for_bit() {
        let pixels: Vec<f32> = (0..=255).map(|v| v as f32).collect();
        let x = Tensor::from_vec(pixels.clone(), (1, 1, 16, 16), &Device::Cpu).unwrap();
        let got = normalize(&x, &Normalization::MINUS_ONE_TO_ONE).unwrap();
        let want = x.affine(1.0 / 127.5, -1.0).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let back = denormalize(&got, &Normalization::MINUS_ONE_TO_ONE).unwrap();
        let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (b, p) in back.iter().zip(&pixels) {
            assert!((b - p).abs() < 1e-4, "{b} vs {p}");
        }
    }

    #[test]
    fn imagenet_is_per_channel_and_checks_the_shape() {
        let x = Tensor::full(255f32, (2, 3, 2, 2), &Device::Cpu).unwrap();
        let y = normalize(&x, &Normalization::IMAGENET).unwrap();
        let first = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap();
        let want = (1.0 - 0.485) / 0.229;
        assert!((first.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        let back = denormalize(&y, &Normalization::IMAGENET).unwrap();
        let err = (back - x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 1e-3);
        let bad = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(normalize(&bad, &Normalization::IMAGENET).is_err());
    }
}
