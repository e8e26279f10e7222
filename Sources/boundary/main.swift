import Boundary
import Foundation

// boundary: tracks operations from the events on the broker; GET /operations/{id}.
exit(await BoundaryRuntime.run())
