//! Serialisation of our plan nodes for the trip client → scheduler → executor. Our nodes are
//! tagged JSON of their specs; everything else goes to Ballista's codec.

use std::sync::Arc;

use datafusion::common::internal_datafusion_err;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::als::by_user::{UserRatings, UserRatingsExec};
use crate::als::evaluate::{AlsEvalExec, EvalSpec};
use crate::als::pairs::{PairFold, PairFoldExec};
use crate::als::plays::{PlayScan, PlayScanExec};
use crate::als::solve::{AlsSolveExec, SolveSpec};
use crate::clean::scan::{TsvScanExec, TsvScanSpec};
use crate::embed::{EmbedExec, EmbedSpec};
use crate::etl::{
    CatalogWrite, CatalogWriteExec, PlayFold, PlayFoldExec, SpellFold, SpellFoldExec, UserMerge,
    UserMergeExec,
};
use crate::sort::{MergeRangeExec, MergeRangeSpec};
use crate::write::{ParquetWriterExec, WriteSpec};

/// Prefix that marks a node encoded by us rather than by Ballista.
const MAGIC: &[u8] = b"recsys-plan:";

#[derive(Serialize, Deserialize)]
enum Node {
    TsvScan(TsvScanSpec),
    AlsSolve(SolveSpec),
    AlsEval(EvalSpec),
    AlsPairFold(PairFold),
    AlsPlayScan(PlayScan),
    AlsUserRatings(UserRatings),
    MergeRange(MergeRangeSpec),
    ParquetWriter(WriteSpec),
    Embed(EmbedSpec),
    EtlPlayFold(PlayFold),
    EtlSpellFold(SpellFold),
    EtlUserMerge(UserMerge),
    EtlCatalogWrite(CatalogWrite),
}

#[derive(Debug)]
pub struct RecsysPhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl RecsysPhysicalCodec {
    pub fn new(inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        RecsysPhysicalCodec { inner }
    }
}

impl PhysicalExtensionCodec for RecsysPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(json) = buf.strip_prefix(MAGIC) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let node: Node = serde_json::from_slice(json)
            .map_err(|e| internal_datafusion_err!("bad recsys plan node: {e}"))?;
        let input = |name: &str| {
            inputs
                .first()
                .cloned()
                .ok_or_else(|| internal_datafusion_err!("{name} needs one input"))
        };
        Ok(match node {
            Node::TsvScan(spec) => Arc::new(TsvScanExec::new(input("TsvScanExec")?, spec)),
            Node::AlsSolve(spec) => Arc::new(AlsSolveExec::new(input("AlsSolveExec")?, spec)),
            Node::AlsEval(spec) => Arc::new(AlsEvalExec::new(input("AlsEvalExec")?, spec)),
            Node::AlsPairFold(spec) => Arc::new(PairFoldExec::new(input("AlsPairFold")?, spec)),
            Node::AlsPlayScan(spec) => Arc::new(PlayScanExec::new(input("AlsPlayScan")?, spec)),
            Node::AlsUserRatings(spec) => {
                Arc::new(UserRatingsExec::new(input("AlsUserRatings")?, spec))
            }
            Node::MergeRange(spec) => Arc::new(MergeRangeExec::new(input("MergeRangeExec")?, spec)),
            Node::ParquetWriter(spec) => Arc::new(ParquetWriterExec::try_new(
                input("ParquetWriterExec")?,
                spec,
            )?),
            Node::Embed(spec) => Arc::new(EmbedExec::new(input("EmbedExec")?, spec)),
            Node::EtlPlayFold(spec) => Arc::new(PlayFoldExec::new(input("EtlPlayFold")?, spec)),
            Node::EtlSpellFold(spec) => Arc::new(SpellFoldExec::new(input("EtlSpellFold")?, spec)),
            Node::EtlUserMerge(spec) => Arc::new(UserMergeExec::new(input("EtlUserMerge")?, spec)),
            Node::EtlCatalogWrite(spec) => {
                Arc::new(CatalogWriteExec::new(input("EtlCatalogWrite")?, spec))
            }
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let any = node.as_ref() as &dyn std::any::Any;
        let ours = if let Some(scan) = any.downcast_ref::<TsvScanExec>() {
            Node::TsvScan(scan.spec().clone())
        } else if let Some(solve) = any.downcast_ref::<AlsSolveExec>() {
            Node::AlsSolve(solve.spec().clone())
        } else if let Some(eval) = any.downcast_ref::<AlsEvalExec>() {
            Node::AlsEval(eval.spec().clone())
        } else if let Some(fold) = any.downcast_ref::<PairFoldExec>() {
            Node::AlsPairFold(fold.spec().clone())
        } else if let Some(scan) = any.downcast_ref::<PlayScanExec>() {
            Node::AlsPlayScan(scan.spec().clone())
        } else if let Some(ratings) = any.downcast_ref::<UserRatingsExec>() {
            Node::AlsUserRatings(ratings.spec().clone())
        } else if let Some(merge) = any.downcast_ref::<MergeRangeExec>() {
            Node::MergeRange(merge.spec().clone())
        } else if let Some(writer) = any.downcast_ref::<ParquetWriterExec>() {
            Node::ParquetWriter(writer.spec().clone())
        } else if let Some(embed) = any.downcast_ref::<EmbedExec>() {
            Node::Embed(embed.spec().clone())
        } else if let Some(fold) = any.downcast_ref::<PlayFoldExec>() {
            Node::EtlPlayFold(fold.spec().clone())
        } else if let Some(fold) = any.downcast_ref::<SpellFoldExec>() {
            Node::EtlSpellFold(fold.spec().clone())
        } else if let Some(merge) = any.downcast_ref::<UserMergeExec>() {
            Node::EtlUserMerge(merge.spec().clone())
        } else if let Some(write) = any.downcast_ref::<CatalogWriteExec>() {
            Node::EtlCatalogWrite(write.spec().clone())
        } else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(buf, &ours)
            .map_err(|e| internal_datafusion_err!("cannot encode plan node: {e}"))
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}
