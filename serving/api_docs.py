"""The service's OpenAPI page: the product's title and text, local assets, valid examples.

BentoML's page says "This is a Machine Learning Service created with BentoML" under
badges loaded from shields.io and badgen.net, and its HTML loads Google Tag Manager.
Here the document's ``info`` is the product's (:func:`info`), the page at ``GET /`` is
:data:`DOCS_HTML` (Swagger UI from BentoML's bundled ``/static_content`` files, no
script, style, image or font from the network, the online validator badge off), and
each request body has an example (:func:`request_example`) built from the examples of
its fields, which the service's own validation accepts (a test posts each one).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engage import __version__

TITLE = "engage"
DESCRIPTION = """\
Churn and appetence predictions on the **engagement index**.

For each contact: the readiness to buy (`p_purchase`, for prospects) and the risk of
leaving (`p_churn`, for customers) from the `champion` models of the MLflow registry,
the stage on the dial (**Nurture**, **Purchase**, **Retention**, **Exit**), the
lifecycle segment, the customer lifetime value and the value at risk, and on request
the reasons behind the stage (TreeSHAP contributions in plain sentences).

- `POST /predict`: contacts by id, features read from the online feature store.
- `POST /predict_features`: the same from features you send (`GET /ready` lists them).
- `POST /at_risk`: the latest batch scoring run's customers by value at risk.
- `GET /ready`: loaded model versions, feature list and limits (503 until ready).

Every error is `{"error": "<one line naming the field and the rule>", "detail": [...]}`.
When `ENGAGE_API_KEY` is set, send it as `x-api-key` or `Authorization: Bearer`.
"""

DOCS_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>{TITLE} {__version__}: prediction API</title>
  <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
  <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: "./docs.json",
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      }});
    }};
  </script>
</body>
</html>
"""


def info() -> dict[str, Any]:
    """The OpenAPI ``info`` object: the product's title, version and description."""
    return {
        "title": TITLE,
        "version": __version__,
        "description": DESCRIPTION,
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    }


def request_example(model: type[BaseModel]) -> dict[str, Any]:
    """A request body from the first example of each field (its default when it has none).

    What Swagger UI's "Try it out" would fill in, made explicit, and checked by
    ``model.model_validate``.

    Raises:
        pydantic.ValidationError: the examples do not pass the model's own rules.

    """
    body: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.examples:
            body[field.alias or name] = field.examples[0]
        elif not field.is_required():
            body[field.alias or name] = field.get_default(call_default_factory=True)
    model.model_validate(body)
    return body
