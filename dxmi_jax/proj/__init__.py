"""Projects built on top of the DxMI core (in the manner of big_vision's ``proj/`` folders).

A project is a package ``dxmi_jax.proj.<name>`` that registers what it adds to the core when it
is imported: networks (``models.registry``), data providers (``data.register``), run modes
(``modes.register``), evaluators (``evaluators.register``) and training stages
(``projects.register_stage``).  No core module imports a project: a config names it
(``config.project``) and ``dxmi_jax.projects.load`` imports it by name.
"""
