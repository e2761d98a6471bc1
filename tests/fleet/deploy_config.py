"""deploy/nginx.conf with a test's addresses put in: the shipped file is the one under test.

The rendering lives in bench/_nginx_conf.py, where the fleet soak uses it too.
"""

from __future__ import annotations

from bench._nginx_conf import DEPLOY_CONF, ROOT, render

__all__ = ["DEPLOY_CONF", "ROOT", "render"]
