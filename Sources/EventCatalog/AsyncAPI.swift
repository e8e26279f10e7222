import Foundation

/// The AsyncAPI 3.0 document of the catalog: a channel per routing key with its AMQP
/// binding, each message's payload schema and properties, and who sends and who receives.
///
/// ```sh
/// stega events --asyncapi > asyncapi.json
/// ```
public enum AsyncAPI {
    /// The JSON schema of each event's payload, by routing key.
    static func payloadSchema(_ routingKey: String) -> [String: Any] {
        let date: [String: Any] = ["type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"]
        let symbol: [String: Any] = ["type": "string", "pattern": "^[A-Z0-9.\\-]{1,15}$"]
        func object(_ properties: [String: Any], required: [String]? = nil) -> [String: Any] {
            ["type": "object", "properties": properties, "required": required ?? properties.keys.sorted(),
             "additionalProperties": false]
        }
        switch RoutingKey.eventName(of: routingKey) {
        case "prices_recorded":
            return object(["symbol": symbol, "first_date": date, "last_date": date, "count": ["type": "integer", "minimum": 1]])
        case "returns_calculated":
            return object(["symbol": symbol, "returns": [
                "type": "array", "description": "simple daily returns of the dates that changed",
                "items": object(["date": date, "value": ["type": "number"]]),
            ]])
        case "window_added":
            return object(["window": ["type": "integer", "minimum": 2, "maximum": 2520]])
        case "correlations_updated":
            return object(["symbols": ["type": "array", "items": symbol],
                           "windows": ["type": "array", "items": ["type": "integer"]],
                           "as_of": ["oneOf": [date, ["type": "null"]]],
                           "pairs": ["type": "integer", "minimum": 0]])
        case "operation_failed":
            return object(["operation_id": ["type": "string"], "service": ["type": "string"], "reason": ["type": "string"]])
        default:
            return ["type": "object"]
        }
    }

    /// The document, as JSON-compatible values.
    public static func document(exchange: String = "events", exchangeType: String = "direct") -> [String: Any] {
        var channels: [String: Any] = [:]
        var operations: [String: Any] = [:]
        var messages: [String: Any] = [:]
        for entry in Catalog.entries {
            let key = entry.routingKey
            let id = key.replacingOccurrences(of: ".", with: "_")
            let name = RoutingKey.eventName(of: key)
            messages[id] = [
                "name": name,
                "title": key,
                "contentType": "application/json",
                "payload": payloadSchema(key),
                "headers": [
                    "type": "object",
                    "properties": [
                        "causation_id": ["type": "string", "description": "the event or command that caused this one"],
                        "schema_version": ["type": "integer", "minimum": 1],
                        "traceparent": ["type": "string", "description": "W3C trace context, when known"],
                    ],
                    "required": ["schema_version"],
                ],
                "correlationId": ["description": "the operation id of the write that started the workflow",
                                  "location": "$message.header#/correlation_id"],
                "bindings": ["amqp": ["messageType": name, "bindingVersion": "0.3.0"]],
            ] as [String: Any]
            channels[id] = [
                "address": key,
                "messages": [name: ["$ref": "#/components/messages/\(id)"]],
                "bindings": ["amqp": [
                    "is": "routingKey",
                    "exchange": ["name": exchange, "type": exchangeType, "durable": true, "autoDelete": false, "vhost": "/"],
                    "bindingVersion": "0.3.0",
                ]],
            ] as [String: Any]
            for (action, processes) in [("send", entry.publishers), ("receive", entry.consumers)] {
                for process in processes {
                    operations["\(process)_\(action)_\(id)"] = [
                        "action": action,
                        "channel": ["$ref": "#/channels/\(id)"],
                        "messages": [["$ref": "#/channels/\(id)/messages/\(name)"]],
                        "summary": "\(process) \(action == "send" ? "publishes" : "consumes") \(key)",
                        "bindings": ["amqp": ["deliveryMode": 2, "bindingVersion": "0.3.0"]],
                    ] as [String: Any]
                }
            }
        }
        return [
            "asyncapi": "3.0.0",
            "info": [
                "title": "stega events",
                "version": "1.0.0",
                "description": "Events of the stega suite: one AMQP message per event on the exchange '\(exchange)', one routing key per event type. Properties: message_id (event id), type (event name), content_type application/json, timestamp (seconds), correlation_id (operation id), app_id (service).",
            ],
            "servers": ["broker": ["host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
                                   "description": "RabbitMQ (STEGA_AMQP_URL)"]],
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": ["messages": messages],
        ]
    }
}
