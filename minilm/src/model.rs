//! all-MiniLM-L6-v2 in burn: the BERT encoder (6 post-LayerNorm layers, 384 hidden, 12 heads,
//! exact-erf GELU, LayerNorm eps 1e-12), mean pooling over the attention mask (`[CLS]` and `[SEP]`
//! included, as sentence-transformers does) and L2 normalisation.
//!
//! Weights come from the model's `model.safetensors` (HuggingFace `BertModel` names), read once;
//! PyTorch stores linear weights `[out, in]`, burn's `linear` takes `[in, out]`, so they are
//! transposed at load. Query, key and value are fused into one `[384, 1152]` projection: one
//! GEMM per layer instead of three.
//!
//! The backend is burn's `flex` (pure-Rust CPU: `gemm` kernels chosen at run time, AVX-512 with
//! the `x86-v4` feature, rayon across cores); attention and GELU run on our own kernels over the
//! same buffers ([`crate::kernels`]), which is where the generic ones lost most time.

use std::path::Path;

use burn::tensor::module::{embedding, layer_norm, linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;

use crate::EmbedError;
use crate::kernels::{self, AttentionShape};

/// Embedding width.
pub const DIM: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = DIM / HEADS;
const LAYERS: usize = 6;
const INTERMEDIATE: usize = 1536;
const MAX_POSITIONS: usize = 512;
const LAYER_NORM_EPS: f64 = 1e-12;

struct Norm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
}

impl Norm {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(
            x,
            self.gamma.clone(),
            Some(self.beta.clone()),
            LAYER_NORM_EPS,
        )
    }
}

struct Dense {
    /// `[in, out]`.
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Dense {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(x, self.weight.clone(), Some(self.bias.clone()))
    }
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

/// The sentence encoder. Cheap to share behind an `Arc`: `encode` takes `&self`.
pub struct MiniLm {
    device: Device,
    word: Tensor<2>,
    /// Position embeddings with the token-type-0 embedding already added (every token type is 0).
    position: Tensor<2>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl MiniLm {
    /// Loads the weights from `model.safetensors` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| EmbedError::Model {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let weights = Weights {
            path: path.display().to_string(),
            tensors: SafeTensors::deserialize(&bytes).map_err(|e| EmbedError::Model {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            device: Device::default(),
        };
        let device = weights.device.clone();
        let word = weights.matrix("embeddings.word_embeddings.weight", [30522, DIM])?;
        let position = {
            let position = weights.raw(
                "embeddings.position_embeddings.weight",
                &[MAX_POSITIONS, DIM],
            )?;
            let token_type = weights.raw("embeddings.token_type_embeddings.weight", &[2, DIM])?;
            let summed: Vec<f32> = position
                .chunks_exact(DIM)
                .flat_map(|row| row.iter().zip(&token_type[..DIM]).map(|(p, t)| p + t))
                .collect();
            Tensor::from_data(TensorData::new(summed, [MAX_POSITIONS, DIM]), &device)
        };
        let embedding_norm = weights.norm("embeddings.LayerNorm")?;
        let layers = (0..LAYERS)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    qkv: weights.fused_dense(&[
                        &format!("{p}.attention.self.query"),
                        &format!("{p}.attention.self.key"),
                        &format!("{p}.attention.self.value"),
                    ])?,
                    attention_out: weights.dense(
                        &format!("{p}.attention.output.dense"),
                        DIM,
                        DIM,
                    )?,
                    attention_norm: weights.norm(&format!("{p}.attention.output.LayerNorm"))?,
                    intermediate: weights.dense(
                        &format!("{p}.intermediate.dense"),
                        DIM,
                        INTERMEDIATE,
                    )?,
                    output: weights.dense(&format!("{p}.output.dense"), INTERMEDIATE, DIM)?,
                    output_norm: weights.norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(MiniLm {
            device,
            word,
            position,
            embedding_norm,
            layers,
        })
    }

    /// Embeds a batch of token id rows (padded to the longest row inside): one L2-normalised
    /// 384-d vector per row, in row order.
    pub fn encode(&self, rows: &[Vec<u32>]) -> Result<Vec<[f32; DIM]>, EmbedError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let b = rows.len();
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        if len > MAX_POSITIONS {
            return Err(EmbedError::Input(format!(
                "{len} tokens: the model takes at most {MAX_POSITIONS}"
            )));
        }
        let mut ids = vec![0i64; b * len];
        let mut keep = vec![0f32; b * len];
        for (r, row) in rows.iter().enumerate() {
            for (c, &id) in row.iter().enumerate() {
                ids[r * len + c] = i64::from(id);
                keep[r * len + c] = 1.0;
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &self.device);
        let keep = Tensor::<2>::from_data(TensorData::new(keep, [b, len]), &self.device);

        let mut x = embedding(self.word.clone(), ids)
            + self.position.clone().narrow(0, 0, len).unsqueeze::<3>();
        x = self.embedding_norm.forward(x);

        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let shape = AttentionShape {
            batch: b,
            len,
            heads: HEADS,
            head_dim: HEAD_DIM,
        };
        for layer in &self.layers {
            let qkv = to_vec(layer.qkv.forward(x.clone()))?;
            let context = self.tensor(kernels::attention(&qkv, &lengths, &shape), [b, len, DIM]);
            x = layer
                .attention_norm
                .forward(layer.attention_out.forward(context) + x);
            let mut hidden = to_vec(layer.intermediate.forward(x.clone()))?;
            kernels::gelu_in_place(&mut hidden);
            let hidden = self.tensor(hidden, [b, len, INTERMEDIATE]);
            x = layer.output_norm.forward(layer.output.forward(hidden) + x);
        }

        // Mean over real tokens, then L2 normalisation.
        let keep = keep.reshape([b, len, 1]);
        let counts = keep.clone().sum_dim(1).clamp_min(1e-9);
        let pooled = (x * keep).sum_dim(1) / counts;
        let pooled = pooled.reshape([b, DIM]);
        let values = to_vec(pooled)?;
        Ok(values
            .chunks_exact(DIM)
            .map(|v| {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                std::array::from_fn(|i| v[i] / norm)
            })
            .collect())
    }
}

impl MiniLm {
    fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, EmbedError> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| EmbedError::Input(format!("reading a tensor: {e:?}")))
}

struct Weights<'a> {
    path: String,
    tensors: SafeTensors<'a>,
    device: Device,
}

impl Weights<'_> {
    fn raw(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let err = |reason: String| EmbedError::Model {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let view = self.tensors.tensor(name).map_err(|e| err(e.to_string()))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
            return Err(err(format!(
                "expected F32 {shape:?}, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<1>, EmbedError> {
        let values = self.raw(name, &[len])?;
        Ok(Tensor::from_data(
            TensorData::new(values, [len]),
            &self.device,
        ))
    }

    fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, EmbedError> {
        let values = self.raw(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn norm(&self, prefix: &str) -> Result<Norm, EmbedError> {
        Ok(Norm {
            gamma: self.vector(&format!("{prefix}.weight"), DIM)?,
            beta: self.vector(&format!("{prefix}.bias"), DIM)?,
        })
    }

    fn dense(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Dense, EmbedError> {
        self.fused(&[prefix], d_in, d_out)
    }

    /// Linear layers sharing an input, side by side in one `[DIM, DIM * parts]` weight.
    fn fused_dense(&self, prefixes: &[&str]) -> Result<Dense, EmbedError> {
        self.fused(prefixes, DIM, DIM)
    }

    fn fused(&self, prefixes: &[&str], d_in: usize, d_out: usize) -> Result<Dense, EmbedError> {
        let width = d_out * prefixes.len();
        let mut weight = vec![0f32; d_in * width];
        let mut bias = Vec::with_capacity(width);
        for (part, prefix) in prefixes.iter().enumerate() {
            // PyTorch `[out, in]` → burn `[in, out]`.
            let w = self.raw(&format!("{prefix}.weight"), &[d_out, d_in])?;
            for o in 0..d_out {
                for i in 0..d_in {
                    weight[i * width + part * d_out + o] = w[o * d_in + i];
                }
            }
            bias.extend(self.raw(&format!("{prefix}.bias"), &[d_out])?);
        }
        Ok(Dense {
            weight: Tensor::from_data(TensorData::new(weight, [d_in, width]), &self.device),
            bias: Tensor::from_data(TensorData::new(bias, [width]), &self.device),
        })
    }
}
