"""The shipped run configs, installed as the package ``vmr_jax_configs``.

One folder per model family, one ``get_config(arg)`` file per setting.  ``vmr-jax --config``
takes a path (``configs/mgpn/synthetic.py`` in a checkout) or the name of one of these
(``mgpn/synthetic``), which works after a plain ``pip install`` too.
"""
