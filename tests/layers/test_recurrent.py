"""PyTorch-layout GRU/LSTM against torch.nn.GRU/LSTM (an independent implementation),
with and without packed (length-aware) sequences."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vmr_jax.layers.recurrent import StackedRNN

torch = pytest.importorskip("torch", reason="install the torch extra: pip install -e '.[torch]'")


def _copy_weights(torch_rnn, layers, bidirectional):
    params = {}
    for layer in range(layers):
        leaf = {}
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            for t_name, f_name in (("weight_ih", "w_ih"), ("weight_hh", "w_hh")):
                leaf[f"{f_name}{suffix}"] = (
                    getattr(torch_rnn, f"{t_name}_l{layer}{suffix}").detach().numpy().T
                )
            for t_name, f_name in (("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
                leaf[f"{f_name}{suffix}"] = (
                    getattr(torch_rnn, f"{t_name}_l{layer}{suffix}").detach().numpy()
                )
        params[f"l{layer}"] = leaf
    return {"params": params}


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_matches_torch(kind, packed, bidirectional):
    torch.manual_seed(0)
    layers, hidden, d_in = 2, 6, 5
    cls = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    ref = cls(d_in, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    x = np.random.default_rng(0).normal(size=(3, 7, d_in)).astype(np.float32)
    lengths = np.array([7, 4, 1])
    with torch.no_grad():
        if packed:
            seq = torch.nn.utils.rnn.pack_padded_sequence(
                torch.from_numpy(x), lengths, batch_first=True, enforce_sorted=False
            )
            out, state = ref(seq)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=7)
        else:
            out, state = ref(torch.from_numpy(x))
    module = StackedRNN(hidden, layers, kind, bidirectional)
    variables = _copy_weights(ref, layers, bidirectional)
    got, final = module.apply(variables, x, lengths if packed else None)
    np.testing.assert_allclose(np.asarray(got), out.numpy(), atol=1e-5)
    if kind == "gru":
        np.testing.assert_allclose(np.asarray(final), state.numpy(), atol=1e-5)
    else:
        np.testing.assert_allclose(np.asarray(final[0]), state[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(final[1]), state[1].numpy(), atol=1e-5)
    # The parameter tree the converter relies on.
    init = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(np.shape, variables)
