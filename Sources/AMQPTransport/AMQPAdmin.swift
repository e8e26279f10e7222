import Foundation
import Logging

/// Operator commands on a service's queues: moving dead letters back to the work queue and
/// unroutable events back to the exchange. Each message is moved with a confirmed publish
/// before the original is acked, so a crash mid-way duplicates at worst (handlers are
/// idempotent by event id), never loses.
public enum AMQPAdmin {
    /// What a replay did.
    public struct Report: Sendable, Equatable, CustomStringConvertible {
        public var moved = 0
        public var kept = 0
        public var description: String { "moved \(moved), kept \(kept)" }
    }

    /// Moves up to `limit` of the messages now in `<service>.events.dead` to `<service>.events`
    /// (through the default exchange, so only this service sees them again), with a fresh
    /// attempt count.
    public static func replayDeadLetters(settings: AMQPSettings, service: String, limit: Int,
                                         queueType: QueueType = .classic, singleActiveConsumer: Bool = false) throws -> Report {
        let connection = try RabbitMQConnection.connect(settings: settings).connection
        defer { connection.close() }
        try connection.selectConfirms()
        let spec = AMQPConsumer.QueueSpec(service: service, mode: .durable, queueType: queueType,
                                          singleActiveConsumer: singleActiveConsumer)
        let depth = try connection.declareQueue(spec.deadLetterQueue, durable: true, exclusive: false,
                                                autoDelete: false, arguments: spec.typeArguments).messages
        _ = try connection.declareQueue(spec.declaredName, durable: true, exclusive: false, autoDelete: false,
                                        arguments: spec.mainArguments)
        var report = Report()
        var tag: UInt64 = 1
        // Only what is there now: a message that fails again and comes back is not replayed twice.
        while report.moved < min(limit, Int(depth)), let delivery = try connection.get(queue: spec.deadLetterQueue) {
            var message = delivery.message
            message.headers[AMQPMessage.Header.routingKey] = .string(message.originalRoutingKey)
            message.headers[AMQPMessage.Header.attempt] = nil
            message.headers[AMQPMessage.Header.attempts] = nil
            message.headers[AMQPMessage.Header.error] = nil
            try connection.publish(message, exchange: "", routingKey: spec.declaredName, mandatory: false)
            try waitForConfirm(connection, tag)
            tag += 1
            try connection.ack(delivery.deliveryTag)
            report.moved += 1
        }
        return report
    }

    /// Publishes up to `limit` messages of `events.unroutable` to the exchange again with
    /// their original routing keys; one that is still unroutable stays in the queue.
    public static func replayUnroutable(settings: AMQPSettings, limit: Int, queueType: QueueType = .classic) throws -> Report {
        let connection = try RabbitMQConnection.connect(settings: settings).connection
        defer { connection.close() }
        try connection.declareExchange(settings.exchange, type: settings.exchangeType, durable: true)
        let depth = try connection.declareQueue(
            AMQPPublisher.unroutableQueue, durable: true, exclusive: false, autoDelete: false,
            arguments: AMQPPublisher.unroutableArguments(queueType)).messages
        try connection.selectConfirms()
        var report = Report()
        var tag: UInt64 = 1
        for _ in 0..<min(limit, Int(depth)) {
            guard let delivery = try connection.get(queue: AMQPPublisher.unroutableQueue) else { break }
            var message = delivery.message
            let key = message.originalRoutingKey
            message.headers[AMQPMessage.Header.routingKey] = nil
            try connection.publish(message, exchange: settings.exchange, routingKey: key, mandatory: true)
            let routed = try waitForConfirm(connection, tag)
            tag += 1
            if !routed {
                // Still nobody bound: back to the end of the queue.
                message.headers[AMQPMessage.Header.routingKey] = .string(key)
                try connection.publish(message, exchange: "", routingKey: AMQPPublisher.unroutableQueue, mandatory: false)
                try waitForConfirm(connection, tag)
                tag += 1
                report.kept += 1
            } else {
                report.moved += 1
            }
            try connection.ack(delivery.deliveryTag)
        }
        return report
    }

    /// Waits for the confirm of publish `tag`; returns false when the message came back unroutable.
    @discardableResult
    private static func waitForConfirm(_ connection: RabbitMQConnection, _ tag: UInt64) throws -> Bool {
        var routed = true
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            switch try connection.nextFrame(timeout: 1) {
            case .ack(let acked, let multiple) where acked == tag || (multiple && acked >= tag):
                return routed
            case .nack:
                throw AMQPError(.publishNacked, "broker nacked a replayed message")
            case .returned:
                routed = false
            default:
                continue
            }
        }
        throw AMQPError(.confirmTimeout, "no confirm for a replayed message")
    }
}
