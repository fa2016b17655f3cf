"""Speed guards: update chunks compile once and never sync with the host inside."""

import jax
import jax.numpy as jnp
import pytest

from algorithms import bc, cqlsac


def chunks():
    data = {"obs": jnp.ones((100, 5)), "action": jnp.zeros((100, 2)), "reward": jnp.zeros(100),
            "next_obs": jnp.ones((100, 5))}
    bc_config = bc.Config(hidden_dim=16, batch_size=8, updates_per_chunk=4)
    yield "bc", jax.jit(bc.make_train_chunk(bc_config), donate_argnums=0), \
        bc.init_state(bc_config, jnp.zeros(5), jnp.ones(5), 2, jax.random.PRNGKey(0)), \
        {"obs": data["obs"], "action": data["action"]}
    cql_config = cqlsac.Config(hidden_dim=16, batch_size=8, updates_per_chunk=4, cql_num_actions=2)
    yield "cql", jax.jit(cqlsac.make_offline_chunk(cql_config), donate_argnums=0), \
        cqlsac.init_state(cql_config, 5, 2, jax.random.PRNGKey(0), offline=True), data


@pytest.mark.parametrize("name, chunk, state, data", list(chunks()), ids=lambda x: x if isinstance(x, str) else "")
def test_chunks_compile_once_and_stay_on_device(name, chunk, state, data):
    state, _ = chunk(state, data)
    with jax.transfer_guard("disallow"):  # any host<->device copy inside a chunk raises
        for _ in range(3):
            state, metrics = chunk(state, data)
    jax.block_until_ready(metrics)
    assert chunk._cache_size() == 1, f"{name} chunk recompiled"
