// Only what Swift cannot import from libmicrohttpd: the variadic MHD_start_daemon,
// MHD_get_daemon_info and MHD_upgrade_action.
#ifndef STEGA_CMICROHTTPD_SHIM_H
#define STEGA_CMICROHTTPD_SHIM_H

#include <stdint.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <microhttpd.h>

/// Calls `MHD_start_daemon` with a bind address, a thread pool, a connection
/// memory limit, a connection timeout, a completion callback and room for 10,000
/// connections (WebSocket subscribers hold theirs).
static inline struct MHD_Daemon *stega_mhd_start(unsigned int flags,
                                                 uint16_t port,
                                                 const struct sockaddr *bind_addr,
                                                 MHD_AccessHandlerCallback handler,
                                                 void *handler_cls,
                                                 MHD_RequestCompletedCallback completed,
                                                 void *completed_cls,
                                                 unsigned int thread_pool_size,
                                                 unsigned int connection_timeout,
                                                 size_t connection_memory_limit) {
    return MHD_start_daemon(flags, port, NULL, NULL, handler, handler_cls,
                            MHD_OPTION_SOCK_ADDR, bind_addr,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
                            MHD_OPTION_THREAD_POOL_SIZE, thread_pool_size,
                            MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, connection_memory_limit,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 10000,
                            MHD_OPTION_END);
}

/// Calls the variadic `MHD_get_daemon_info` for `MHD_DAEMON_INFO_BIND_PORT`; 0 on failure.
static inline uint16_t stega_mhd_bound_port(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

/// Calls the variadic `MHD_upgrade_action` with `MHD_UPGRADE_ACTION_CLOSE`.
static inline enum MHD_Result stega_mhd_upgrade_close(struct MHD_UpgradeResponseHandle *urh) {
    return MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
}

#endif
