"""The OpenAPI 3.1 documents kept in the repo are valid (openapi-spec-validator); the Swift
tests check that each router's routes are exactly the document's paths."""
import json

from openapi_spec_validator import validate

from conftest import ROOT


def test_openapi_documents_are_valid():
    for module in ("Returns", "Correlations", "Boundary"):
        doc = json.loads((ROOT / "Sources" / module / "openapi.json").read_text())
        assert doc["openapi"] == "3.1.0"
        validate(doc)
