"""The web interface: pages for marketing and sales over the service.

Every page is rendered on the server from the same function that answers its JSON twin under
``/api/v1`` (the lead list from :func:`leadscore.service.views.leads_data`, a lead from
``lead_data``, the overview from ``overview_data`` and so on). Charts are inline SVG drawn here;
the little script there is (``static/app.js``) only sends the forms to the JSON API. Nothing is
loaded from outside the server.
"""

from __future__ import annotations

from leadscore.ui.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
