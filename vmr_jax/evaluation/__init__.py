"""evaluation: the official protocols and their evaluators.

:data:`PROTOCOLS` names the protocols ``vmr-jax score`` knows (:mod:`.scoring` documents
each); it lives here, free of imports, so that ``vmr-jax score --help`` loads no JAX.
"""

PROTOCOLS = ("2dtan", "mmn", "tvr", "didemo")
