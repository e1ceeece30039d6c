"""The introductory feed-forward network, trained by backpropagation for one step.

Three inputs, two hidden layers of sigmoid units, and an output layer; the
"total error" is the square loss, gradients come from ``jax.grad`` and one
gradient-descent step lowers the error.

    python examples/intro_mlp.py
"""

import jax
import jax.numpy as jnp
import optax

import jaxconv as jc

key_init, key_data = jax.random.split(jax.random.PRNGKey(0))
model = jc.models.intro_mlp(hidden=(4, 4), num_outputs=2)
out_shape, params, state = model.init(key_init, (-1, 3))
print("layers:", list(params), "-> output shape", out_shape)

inputs = jax.random.uniform(key_data, (8, 3))          # 8 random examples of 3 inputs
targets = (inputs.sum(axis=1) > 1.5).astype(jnp.int32)  # a class to learn


def total_error(params):
    outputs, _ = model.apply(params, state, inputs)
    return jc.square_loss(jax.nn.softmax(outputs), targets)


optimizer = optax.sgd(learning_rate=0.5)
opt_state = optimizer.init(params)
before, grads = jax.value_and_grad(total_error)(params)
updates, opt_state = optimizer.update(grads, opt_state, params)
params = optax.apply_updates(params, updates)
after = total_error(params)
print(f"total error before {before:.6f}, after one step {after:.6f}")
assert after < before
