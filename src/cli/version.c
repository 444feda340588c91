/* `fedmm version`: the version and which optional backends this binary carries. */
#include <stdio.h>

#include "cli/commands.h"
#include "fedmm/device.h"

int fm_cli_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char why[256] = "";
    int gpus = fm_cuda_device_count(why, sizeof why);
    printf("fedmm 0.1.0\n");
    printf("cuda backend: %s\n", fm_build_has_cuda() ? "built" : "not built");
#ifdef FEDMM_WITH_GRPC
    printf("grpc control plane: built\n");
#else
    printf("grpc control plane: not built\n");
#endif
    if (gpus > 0)
        printf("usable GPUs: %d\n", gpus);
    else
        printf("usable GPUs: 0 (%s)\n", why);
    return 0;
}
