//! Inference on constant weights in the NHWC layout (channels innermost), kept from one layer to the next.
//!
//! The NCHW kernels of [`crate::fused`] are as fast as the layout allows on the 1x1 convolutions, but a
//! depthwise convolution on NCHW works plane by plane: each plane is copied into a padded polyphase
//! buffer, and on the small planes of a network's deep end (7x7, 14x14) its rows are shorter than a
//! vector. In NHWC a depthwise convolution is vectorised over the channels (every MobileNet layer has a
//! multiple of 16 of them), reads the input in place (a padded tap is skipped, not read from a copy) and
//! keeps its sum per output pixel in a register. The 1x1 convolutions become `pixels x c_in` by
//! `c_in x c_out` products with the same register-blocked kernels as NCHW, transposed: one sum per
//! output value, in the same order, so a layer gives the NCHW path's values bit for bit.
//!
//! A network converts its input once ([`NhwcMaps::from_nchw`]), runs its layers here, and converts the
//! feature maps it hands on ([`NhwcMaps::to_nchw`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use voc_tensor::fused::Act;
//! use voc_tensor::nhwc::{DepthwiseConv, NhwcMaps, PointwiseConv};
//! use voc_tensor::ops::Padding;
//! let dev = Device::Cpu;
//! let x = Tensor::rand(-1f32, 1f32, (2, 16, 9, 9), &dev)?;
//! let dw = DepthwiseConv::new(
//!     &Tensor::rand(-1f32, 1f32, (16, 1, 3, 3), &dev)?,
//!     &Tensor::zeros(16, candle_core::DType::F32, &dev)?,
//!     Act::Relu6,
//! )?;
//! let pw = PointwiseConv::new(
//!     &Tensor::rand(-1f32, 1f32, (24, 16, 1, 1), &dev)?,
//!     &Tensor::zeros(24, candle_core::DType::F32, &dev)?,
//!     Act::Identity,
//! )?;
//! let h = dw.forward(&NhwcMaps::from_nchw(&x)?, 2, 1, Padding::same(1))?;
//! let y = pw.forward(&h, None)?.to_nchw()?;
//! assert_eq!(y.dims(), [2, 24, 5, 5]);
//! # Ok::<(), voc_tensor::VocError>(())
//! ```
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, VocError};
use crate::fused::pointwise_gemm::{pointwise_forward_epilogue, PointwiseProblem};
use crate::fused::Act;
use crate::ops::Padding;

mod block;
mod kernels;

pub use block::InvertedResidual;

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether networks that can run their inference here do (the default), instead of on the NCHW
/// kernels. Both give the same values; tests and benchmarks switch it to compare the two, with
/// [`set_enabled`] or, for a whole process, `VOC_NHWC=0` in the environment.
pub fn enabled() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env_allows = *FROM_ENV.get_or_init(|| std::env::var("VOC_NHWC").map_or(true, |v| v != "0"));
    env_allows && ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Switches the NHWC inference path on or off, process-wide (see [`enabled`]).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A batch of `n` feature maps of `h x w` pixels and `c` channels, stored pixel by pixel with each
/// pixel's channels contiguous (`[n][h][w][c]`), on the CPU in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NhwcMaps {
    data: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl NhwcMaps {
    /// Maps of the given size from their values in NHWC order; a length other than `n*h*w*c` is an
    /// error.
    pub fn new(data: Vec<f32>, (n, h, w, c): (usize, usize, usize, usize)) -> Result<Self> {
        if data.len() != n * h * w * c {
            return Err(VocError::BadArgument(format!(
                "NHWC maps of {n}x{h}x{w}x{c} need {} values, got {}",
                n * h * w * c,
                data.len()
            )));
        }
        Ok(Self { data, n, h, w, c })
    }

    /// The maps of an `N x C x H x W` tensor (any device and float dtype: read back as f32 on the CPU).
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = crate::ops::dims4(x, "NhwcMaps::from_nchw")?;
        let data = x
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self { data, n, h, w, c })
    }

    /// The same values as an `N x C x H x W` tensor on the CPU (the channels transposed in parallel
    /// blocks: a network hands on maps of up to a few megabytes).
    pub fn to_nchw(&self) -> Result<Tensor> {
        use rayon::prelude::*;
        const BLOCK: usize = 16;
        let (n, h, w, c) = self.dims();
        let hw = h * w;
        let mut out = vec![0f32; self.data.len()];
        if hw > 0 && c > 0 {
            // One task per image and block of 16 channels: it reads each pixel's 16 channels (one
            // cache line) and writes 16 planes.
            out.par_chunks_mut(c * hw)
                .zip(self.data.par_chunks(c * hw))
                .for_each(|(image_out, src)| {
                    image_out
                        .par_chunks_mut(BLOCK * hw)
                        .enumerate()
                        .for_each(|(block, planes)| {
                            let (c0, channels) = (block * BLOCK, planes.len() / hw);
                            for (p, pixel) in src.chunks_exact(c).enumerate() {
                                for (cc, &v) in pixel[c0..c0 + channels].iter().enumerate() {
                                    planes[cc * hw + p] = v;
                                }
                            }
                        });
                });
        }
        Ok(Tensor::from_vec(out, (n, c, h, w), &Device::Cpu)?)
    }

    /// `(n, h, w, c)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.h, self.w, self.c)
    }

    /// The values, NHWC order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Global average pooling: `n x c` means over the pixels, as an `N x C` tensor on the CPU.
    ///
    /// Computed as candle computes `mean_keepdim(3)` then `mean_keepdim(2)` on the NCHW maps when rows
    /// are narrower than 32 pixels (then candle sums each row left to right): each row summed from 0
    /// and scaled by `1/w`, those row means summed top to bottom and scaled by `1/h`. Such maps (every
    /// classifier input below 1024 pixels) pool to the same values in either layout.
    pub fn mean_of_row_means(&self) -> Result<Tensor> {
        let (n, h, w, c) = self.dims();
        // candle scales by 1/len computed in f64, rounded to the element type.
        let (inv_w, inv_h) = ((1.0 / w as f64) as f32, (1.0 / h as f64) as f32);
        let mut means = vec![0f32; n * c];
        let mut row_sum = vec![0f32; c];
        if c > 0 {
            for (image, mean) in self
                .data
                .chunks_exact(h * w * c)
                .zip(means.chunks_exact_mut(c))
            {
                for row in image.chunks_exact(w * c) {
                    row_sum.fill(0.0);
                    for pixel in row.chunks_exact(c) {
                        for (s, &v) in row_sum.iter_mut().zip(pixel) {
                            *s += v;
                        }
                    }
                    for (m, &s) in mean.iter_mut().zip(&row_sum) {
                        *m += s * inv_w + 0.0;
                    }
                }
                for m in mean.iter_mut() {
                    *m = *m * inv_h + 0.0;
                }
            }
        }
        Ok(Tensor::from_vec(means, (n, c), &Device::Cpu)?)
    }
}

/// The values of a constant CPU tensor, checked to hold `len` of them.
fn values_of(t: &Tensor, len: usize, what: &str) -> Result<Vec<f32>> {
    if t.elem_count() != len {
        return Err(VocError::BadArgument(format!(
            "{what}: expected {len} values, got a tensor of shape {:?}",
            t.dims()
        )));
    }
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Output channels per panel of a packed 1x1 kernel (the AVX-512 register block's width).
const PANEL: usize = 32;

/// The `cols x rows` transpose of the row-major `rows x cols` matrix `m`: a kernel with one row per
/// output channel becomes one row per tap, its channels contiguous.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for (r, row) in m.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * rows + r] = v;
        }
    }
    t
}

/// A 1x1 convolution with its batch norm folded in: `act(Σ_k w[o, k] · x[.., k] + shift[o] (+ residual))`
/// at every pixel.
#[derive(Debug, Clone)]
pub struct PointwiseConv {
    /// The transposed kernel (`c_in x c_out`: row `k` holds every output channel's weight for input
    /// channel `k`) in panels of [`PANEL`] output channels, each `c_in x PANEL` values in a row, the
    /// last zero-padded: a register block reads its weights as one stream.
    weight_t: Vec<f32>,
    shift: Vec<f32>,
    c_in: usize,
    c_out: usize,
    act: Act,
}

impl PointwiseConv {
    /// From the kernel (`c_out x c_in x 1 x 1`, or `c_out x c_in`) and the per-channel shift (`c_out`).
    pub fn new(weight: &Tensor, shift: &Tensor, act: Act) -> Result<Self> {
        let dims = weight.dims();
        let (c_out, c_in) = match dims {
            [o, i] | [o, i, 1, 1] => (*o, *i),
            _ => {
                return Err(VocError::BadArgument(format!(
                    "PointwiseConv: weight of shape {dims:?}, expected c_out x c_in x 1 x 1"
                )))
            }
        };
        let w = values_of(weight, c_out * c_in, "PointwiseConv weight")?;
        let mut weight_t = vec![0f32; c_out.div_ceil(PANEL) * PANEL * c_in];
        for (o, row) in w.chunks_exact(c_in).enumerate() {
            let panel = &mut weight_t[(o / PANEL) * c_in * PANEL..];
            for (k, &v) in row.iter().enumerate() {
                panel[k * PANEL + o % PANEL] = v;
            }
        }
        Ok(Self {
            weight_t,
            shift: values_of(shift, c_out, "PointwiseConv shift")?,
            c_in,
            c_out,
            act,
        })
    }

    /// `(c_in, c_out)`.
    pub fn channels(&self) -> (usize, usize) {
        (self.c_in, self.c_out)
    }

    /// The convolution of `x`, plus `residual` (maps of the output's size) before the activation.
    pub fn forward(&self, x: &NhwcMaps, residual: Option<&NhwcMaps>) -> Result<NhwcMaps> {
        let (n, h, w, c) = x.dims();
        if c != self.c_in {
            return Err(VocError::BadArgument(format!(
                "PointwiseConv: input has {c} channels, the weights {}",
                self.c_in
            )));
        }
        let out_dims = (n, h, w, self.c_out);
        if let Some(r) = residual {
            if r.dims() != out_dims {
                return Err(VocError::BadArgument(format!(
                    "PointwiseConv: residual of {:?}, the output is {out_dims:?}",
                    r.dims()
                )));
            }
        }
        let pixels = n * h * w;
        // Transposed onto the NCHW kernels: their "weight rows" are the pixels, their "input rows" the
        // rows of the transposed weight, one column per output channel.
        let data = pointwise_forward_epilogue(&PointwiseProblem {
            x: &self.weight_t,
            weight: &x.data,
            shift: Some(&self.shift),
            residual: residual.map(|r| &r.data[..]),
            act: self.act,
            shift_per_col: true,
            x_panel: PANEL,
            n: 1,
            c_in: self.c_in,
            c_out: pixels,
            hw: self.c_out,
        });
        NhwcMaps::new(data, out_dims)
    }
}

/// A dense `kh x kw` convolution with its batch norm folded in, reading an NCHW batch and writing NHWC
/// maps: the first layer of a network, on the few channels of an image. Each output pixel sums its
/// patch (`c_in x kh x kw` values, in the kernel's order) times the kernel in vectors of output
/// channels: what a 1x1 convolution of a matrix of patches computes, without building the matrix.
#[derive(Debug, Clone)]
pub struct DenseConv {
    /// `(c_in*kh*kw) x c_out`: row `(ci * kh + ky) * kw + kx` holds every output channel's weight.
    weight_t: Vec<f32>,
    shift: Vec<f32>,
    act: Act,
    c_out: usize,
    c_in: usize,
    kh: usize,
    kw: usize,
}

impl DenseConv {
    /// From the kernel (`c_out x c_in x kh x kw`) and the per-channel shift (`c_out`).
    pub fn new(weight: &Tensor, shift: &Tensor, act: Act) -> Result<Self> {
        let dims = weight.dims();
        let &[c_out, c_in, kh, kw] = dims else {
            return Err(VocError::BadArgument(format!(
                "DenseConv: weight of shape {dims:?}, expected c_out x c_in x kh x kw"
            )));
        };
        if c_in * kh > kernels::MAX_DENSE_ROWS {
            return Err(VocError::BadArgument(format!(
                "DenseConv: {c_in} input channels x {kh} kernel rows, at most {} (a first layer, on \
                 an image's few channels)",
                kernels::MAX_DENSE_ROWS
            )));
        }
        let k = c_in * kh * kw;
        let w = values_of(weight, c_out * k, "DenseConv weight")?;
        Ok(Self {
            weight_t: transposed(&w, c_out, k),
            shift: values_of(shift, c_out, "DenseConv shift")?,
            act,
            c_out,
            c_in,
            kh,
            kw,
        })
    }

    /// The convolution of the `N x C x H x W` batch `x` (CPU, f32) at `stride` and `dilation` with
    /// `padding` zeros around it.
    pub fn forward_nchw(
        &self,
        x: &Tensor,
        stride: usize,
        dilation: usize,
        padding: Padding,
    ) -> Result<NhwcMaps> {
        let (n, c, h, w) = crate::ops::dims4(x, "DenseConv::forward_nchw")?;
        if c != self.c_in {
            return Err(VocError::BadArgument(format!(
                "DenseConv: input has {c} channels, the weights {}",
                self.c_in
            )));
        }
        let geometry = geometry((h, w, c), (self.kh, self.kw), stride, dilation, padding)?;
        // Read in place: a copy of the image cost a tenth of the convolution.
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            return Err(VocError::BadArgument(
                "DenseConv::forward_nchw: expected a CPU tensor".into(),
            ));
        };
        let x = crate::ops::contiguous_f32(storage, layout, "DenseConv input")?;
        let data = kernels::dense_forward(
            &geometry,
            self.c_out,
            n,
            x,
            &self.weight_t,
            &self.shift,
            self.act,
        );
        NhwcMaps::new(data, (n, geometry.oh, geometry.ow, self.c_out))
    }
}

/// The sizes of a `kh x kw` convolution on `h x w x c` maps at `stride` and `dilation` (0 read as 1)
/// with `padding`, its output size included; an error when the padded input is smaller than the
/// (dilated) kernel.
fn geometry(
    (h, w, c): (usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    dilation: usize,
    padding: Padding,
) -> Result<kernels::Geometry> {
    let (stride, dilation) = (stride.max(1), dilation.max(1));
    Ok(kernels::Geometry {
        h,
        w,
        c,
        kh,
        kw,
        oh: out_len(h, padding.top, padding.bottom, kh, stride, dilation)?,
        ow: out_len(w, padding.left, padding.right, kw, stride, dilation)?,
        stride,
        dilation,
        pad_top: padding.top,
        pad_left: padding.left,
    })
}

/// Output length of one axis of a convolution, or an error naming the sizes when the padded input is
/// smaller than the (dilated) kernel.
fn out_len(
    size: usize,
    before: usize,
    after: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    (size + before + after)
        .checked_sub(span)
        .map(|free| free / stride + 1)
        .ok_or_else(|| {
            VocError::BadArgument(format!(
                "convolution: an input of {size} padded by {before} + {after} is smaller than the \
                 {kernel}-tap kernel at dilation {dilation}"
            ))
        })
}

/// A depthwise convolution with its batch norm folded in: `act(Σ_taps w[c, tap] · x[.., c] + shift[c])`.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// `kh*kw x c`: each tap's weights for every channel, contiguous.
    taps: Vec<f32>,
    shift: Vec<f32>,
    c: usize,
    kh: usize,
    kw: usize,
    act: Act,
}

impl DepthwiseConv {
    /// From the kernel (`c x 1 x kh x kw`) and the per-channel shift (`c`).
    pub fn new(weight: &Tensor, shift: &Tensor, act: Act) -> Result<Self> {
        let dims = weight.dims();
        let &[c, 1, kh, kw] = dims else {
            return Err(VocError::BadArgument(format!(
                "DepthwiseConv: weight of shape {dims:?}, expected channels x 1 x kh x kw"
            )));
        };
        let w = values_of(weight, c * kh * kw, "DepthwiseConv weight")?;
        Ok(Self {
            taps: transposed(&w, c, kh * kw),
            shift: values_of(shift, c, "DepthwiseConv shift")?,
            c,
            kh,
            kw,
            act,
        })
    }

    /// The convolution of `x` at `stride` and `dilation` with `padding` zeros around it.
    pub fn forward(
        &self,
        x: &NhwcMaps,
        stride: usize,
        dilation: usize,
        padding: Padding,
    ) -> Result<NhwcMaps> {
        let (n, h, w, c) = x.dims();
        if c != self.c {
            return Err(VocError::BadArgument(format!(
                "DepthwiseConv: input has {c} channels, the weights {}",
                self.c
            )));
        }
        let geometry = geometry((h, w, c), (self.kh, self.kw), stride, dilation, padding)?;
        let data =
            kernels::depthwise_forward(&geometry, n, &x.data, &self.taps, &self.shift, self.act);
        NhwcMaps::new(data, (n, geometry.oh, geometry.ow, c))
    }
}

#[cfg(test)]
mod tests;
