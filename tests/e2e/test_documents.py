"""Documents generated from the code: the AsyncAPI 3.0 document of the event catalog,
validated against the published schema (../shared/schemas/asyncapi-3.0.0.json)."""
import json
import subprocess

import jsonschema

from conftest import BIN, ROOT

# The workplace's published schemas when the clone sits beside them, the copies in tests/schemas otherwise.
SCHEMAS = ROOT.parent / "shared" / "schemas"
if not (SCHEMAS / "compose-spec.json").exists():
    SCHEMAS = ROOT / "tests" / "schemas"


def test_asyncapi_document_is_valid_and_matches_the_catalog():
    out = subprocess.run([str(BIN / "stega"), "events", "--asyncapi"], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    schema_path = SCHEMAS / "asyncapi-3.0.0.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert errors == []

    catalog = json.loads(subprocess.run([str(BIN / "stega"), "events", "--json"], capture_output=True, text=True,
                                        check=True).stdout)
    assert sorted(c["address"] for c in doc["channels"].values()) == sorted(e["routing_key"] for e in catalog)
    for op_id, op in doc["operations"].items():
        channel = op["channel"]["$ref"].split("/")[-1]
        assert channel in doc["channels"], op_id
        assert op["action"] in ("send", "receive")
    senders = {op["summary"].split()[0] for op in doc["operations"].values() if op["action"] == "send"}
    assert {"returns-api", "returns-worker", "correlations-api", "correlations-worker"} <= senders

    # The payload schemas accept real payloads and refuse wrong ones.
    prices = doc["components"]["messages"]["returns_events_prices_recorded"]["payload"]
    jsonschema.validate({"symbol": "AAPL", "first_date": "2024-01-02", "last_date": "2024-01-04", "count": 3}, prices)
    try:
        jsonschema.validate({"symbol": "aapl", "count": 0}, prices)
        raise AssertionError("a wrong payload was accepted")
    except jsonschema.ValidationError:
        pass
