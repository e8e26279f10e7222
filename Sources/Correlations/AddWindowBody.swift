import HTTPServer
import MessageBus

/// The body of `POST /windows` → ``AddWindow``: 400 `invalid_body` for JSON faults (a string,
/// `60.5`), 422 `invalid_window` out of range (the command's rule).
public enum AddWindowBody {
    public static func parse(_ body: [UInt8]) throws(HTTPError) -> AddWindow {
        let fields = try JSONValue.parseObject(body)
        guard let value = fields["window"] else { throw .invalidBody("missing field window") }
        guard case .number(let number, let integral) = value, integral, number.isFinite else {
            throw .invalidBody("window must be an integer, got \(value.typeName == "number" ? "a fraction" : value.typeName)")
        }
        do {
            // Out of Int's range is out of the window range too.
            return try AddWindow(validating: Int(exactly: number) ?? Int.max)
        } catch {
            throw .unprocessable(error.code, error.message)
        }
    }
}
