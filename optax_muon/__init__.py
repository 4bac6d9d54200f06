"""optax_muon: Muon-family optimizers as composable Optax transformations."""

from optax_muon._aliases import (
    ALIASES,
    adamuon,
    in_float32,
    mommuon,
    muon,
    muonh,
    normuon,
    normuonh,
    ogsignmuon,
    static_args,
)
from optax_muon._describe import describe
from optax_muon._hyperball import HyperballState, hyperball
from optax_muon._labels import (
    EMBEDDING_NAMES,
    HEAD_NAMES,
    HEAD_OWNER_NAMES,
    NON_MATRIX_NAMES,
    muon_labels,
    token_vocab_size,
)
from optax_muon._layout import Layout, LeafLayout, infer_layout
from optax_muon._matrix import (
    ATTENTION_INPUT_NAMES,
    MatrixAxes,
    MatrixView,
    matrix_view,
    per_head,
    stacked,
)
from optax_muon._newton_schulz import (
    NewtonSchulz,
    inverse_sqrt,
    ns_coefficients,
    ns_flops,
    orthogonalize,
)
from optax_muon._qk_clip import qk_clip
from optax_muon._skeleton import ScaleByMuonState
from optax_muon._tuning import Tuning
from optax_muon._variants import (
    ScaleByAdaMuonState,
    ScaleByMomMuonGramState,
    ScaleByMomMuonState,
    ScaleByNorMuonState,
    scale_by_adamuon,
    scale_by_mommuon,
    scale_by_muon,
    scale_by_normuon,
    scale_by_ogsignmuon,
)
from optax_muon._weight_decay import add_cautious_decayed_weights

__version__ = "0.1.0"

__all__ = (
    "ALIASES",
    "ATTENTION_INPUT_NAMES",
    "EMBEDDING_NAMES",
    "HEAD_NAMES",
    "HEAD_OWNER_NAMES",
    "Layout",
    "LeafLayout",
    "NON_MATRIX_NAMES",
    "HyperballState",
    "MatrixAxes",
    "MatrixView",
    "NewtonSchulz",
    "ScaleByAdaMuonState",
    "ScaleByMomMuonGramState",
    "ScaleByMomMuonState",
    "ScaleByMuonState",
    "ScaleByNorMuonState",
    "Tuning",
    "adamuon",
    "add_cautious_decayed_weights",
    "describe",
    "hyperball",
    "in_float32",
    "infer_layout",
    "inverse_sqrt",
    "matrix_view",
    "mommuon",
    "muon",
    "muon_labels",
    "muonh",
    "normuon",
    "normuonh",
    "ns_coefficients",
    "ns_flops",
    "ogsignmuon",
    "orthogonalize",
    "per_head",
    "qk_clip",
    "scale_by_adamuon",
    "scale_by_mommuon",
    "scale_by_muon",
    "scale_by_normuon",
    "scale_by_ogsignmuon",
    "stacked",
    "static_args",
    "token_vocab_size",
)
