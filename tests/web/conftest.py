from tests.integration.conftest import bridge, make_caller, no_leaks, server_env, sim_config, vapi_sim  # noqa: F401
