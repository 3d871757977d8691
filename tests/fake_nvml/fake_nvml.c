/*
 * A fake libnvidia-ml.so.1 for tests on machines without a GPU.
 *
 * It exports the nvml* symbols the sidecar's GPU collector calls through the real
 * nvidia-ml-py (pynvml) binding, so tests run the same Python code as production. Values and
 * error codes come from a state file named by $FAKE_NVML_STATE ("key value" lines, reloaded
 * when the file changes), XID events from $FAKE_NVML_EVENTS ("gpu_index xid" lines, each
 * delivered once). Keys (gpuN. prefix per device):
 *   init <rc>                  nvmlInitWithFlags return code (9 = DRIVER_NOT_LOADED)
 *   count <n>                  number of devices
 *   gpuN.name/uuid/busid <s>   strings
 *   gpuN.<field> <number>      util_gpu util_mem mem_total mem_used temp temp_slowdown
 *                              temp_shutdown power_mw power_limit_mw clock_sm clock_mem
 *                              throttle ecc_corr_vol ecc_unc_vol ecc_corr_agg ecc_unc_agg
 *                              retired_sbe retired_dbe remap_corr remap_unc remap_pending
 *                              remap_failure pcie_replay pcie_tx_kbs pcie_rx_kbs fan
 *                              persistence nvlinks nvlink_replay nvlink_recovery nvlink_crc
 *   gpuN.procs pid:bytes,...   compute processes
 *   gpuN.lost 1                every call on the device returns GPU_IS_LOST (15)
 *   gpuN.err.<function> <rc>   one function fails on one device
 *   err.<function> <rc>        one function fails on every device
 *   delay_ms <ms>              every device call sleeps this long (a slow NVML)
 * Build: gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#define MAX_KEYS 4096
#define MAX_GPUS 64
typedef struct { int index; } gpu_t;
typedef gpu_t *nvmlDevice_t;
typedef struct { nvmlDevice_t device; unsigned long long eventType, eventData; unsigned gi, ci; } nvmlEventData_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
typedef struct { char busIdLegacy[16]; unsigned domain, bus, device, pciDeviceId, pciSubSystemId; char busId[32]; } nvmlPciInfo_t;
typedef struct { unsigned pid; unsigned long long usedGpuMemory; unsigned gi, ci; } nvmlProcessInfo_t;

static gpu_t gpus[MAX_GPUS];
static char *keys[MAX_KEYS], *values[MAX_KEYS];
static int nkeys = 0;
static time_t loaded_mtime = 0;
static long loaded_mtime_ns = -1;
static long events_offset = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void load(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    struct stat st;
    if (!path || stat(path, &st) != 0) return;
    if (st.st_mtim.tv_sec == loaded_mtime && st.st_mtim.tv_nsec == loaded_mtime_ns) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    for (int i = 0; i < nkeys; i++) { free(keys[i]); free(values[i]); }
    nkeys = 0;
    char line[1024];
    while (fgets(line, sizeof line, f) && nkeys < MAX_KEYS) {
        line[strcspn(line, "\r\n")] = 0;
        char *space = strchr(line, ' ');
        if (!space || line[0] == '#') continue;
        *space = 0;
        keys[nkeys] = strdup(line);
        values[nkeys] = strdup(space + 1);
        nkeys++;
    }
    fclose(f);
    loaded_mtime = st.st_mtim.tv_sec;
    loaded_mtime_ns = st.st_mtim.tv_nsec;
}

static const char *lookup(const char *key) {
    for (int i = nkeys - 1; i >= 0; i--)
        if (strcmp(keys[i], key) == 0) return values[i];
    return NULL;
}

static const char *gpu_str(int gpu, const char *field) {
    char key[256];
    snprintf(key, sizeof key, "gpu%d.%s", gpu, field);
    return lookup(key);
}

static unsigned long long gpu_num(int gpu, const char *field, unsigned long long fallback) {
    const char *v = gpu_str(gpu, field);
    return v ? strtoull(v, NULL, 10) : fallback;
}

/* Error to return for this call, if any; also applies the configured delay. */
static int fail(nvmlDevice_t dev, const char *function) {
    pthread_mutex_lock(&lock);
    load();
    const char *delay = lookup("delay_ms");
    int rc = 0;
    if (dev) {
        char key[256];
        if (gpu_num(dev->index, "lost", 0)) rc = 15;
        snprintf(key, sizeof key, "gpu%d.err.%s", dev->index, function);
        if (!rc && lookup(key)) rc = atoi(lookup(key));
    }
    char global[256];
    snprintf(global, sizeof global, "err.%s", function);
    if (!rc && lookup(global)) rc = atoi(lookup(global));
    pthread_mutex_unlock(&lock);
    if (delay) usleep((useconds_t)atoi(delay) * 1000);
    return rc;
}

#define CHECK(dev) do { int _rc = fail(dev, __func__); if (_rc) return _rc; } while (0)

int nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    load();
    const char *init = lookup("init");
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < MAX_GPUS; i++) gpus[i].index = i;
    return init ? atoi(init) : 0;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return 0; }

const char *nvmlErrorString(int rc) {
    switch (rc) {
    case 0: return "Success";
    case 3: return "Not Supported";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 15: return "GPU is lost";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned length) {
    CHECK(NULL);
    snprintf(version, length, "%s", "550.54.15-fake");
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned *count) {
    CHECK(NULL);
    pthread_mutex_lock(&lock);
    const char *n = lookup("count");
    pthread_mutex_unlock(&lock);
    *count = n ? (unsigned)atoi(n) : 0;
    if (*count > MAX_GPUS) *count = MAX_GPUS;
    return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t *device) {
    CHECK(NULL);
    unsigned count = 0;
    nvmlDeviceGetCount_v2(&count);
    if (index >= count) return 2;
    *device = &gpus[index];
    if (gpu_num(index, "lost", 0)) return 15;
    return 0;
}

int nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned *index) { *index = (unsigned)dev->index; return 0; }

static int copy_str(nvmlDevice_t dev, const char *field, const char *fallback, char *out, unsigned length) {
    pthread_mutex_lock(&lock);
    const char *v = gpu_str(dev->index, field);
    snprintf(out, length, "%s", v ? v : fallback);
    pthread_mutex_unlock(&lock);
    return 0;
}

int nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned length) {
    CHECK(dev);
    return copy_str(dev, "name", "NVIDIA H100 80GB HBM3", name, length);
}

int nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned length) {
    CHECK(dev);
    char fallback[64];
    snprintf(fallback, sizeof fallback, "GPU-00000000-0000-0000-0000-%012d", dev->index);
    return copy_str(dev, "uuid", fallback, uuid, length);
}

int nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    CHECK(dev);
    memset(pci, 0, sizeof *pci);
    char fallback[32];
    snprintf(fallback, sizeof fallback, "00000000:%02X:00.0", 0x07 + dev->index);
    copy_str(dev, "busid", fallback, pci->busId, sizeof pci->busId);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%.15s", pci->busId);
    pci->bus = 0x07 + (unsigned)dev->index;
    pci->pciDeviceId = 0x233010DE;
    return 0;
}

#define GET(dev, field, fallback) ({ pthread_mutex_lock(&lock); unsigned long long _v = gpu_num((dev)->index, field, fallback); pthread_mutex_unlock(&lock); _v; })

int nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *util) {
    CHECK(dev);
    util->gpu = (unsigned)GET(dev, "util_gpu", 0);
    util->memory = (unsigned)GET(dev, "util_mem", 0);
    return 0;
}

int nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem) {
    CHECK(dev);
    mem->total = GET(dev, "mem_total", 85899345920ULL);
    mem->used = GET(dev, "mem_used", 0);
    mem->free = mem->total > mem->used ? mem->total - mem->used : 0;
    return 0;
}

int nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned *temp) {
    CHECK(dev);
    if (sensor != 0) return 2;
    *temp = (unsigned)GET(dev, "temp", 40);
    return 0;
}

int nvmlDeviceGetTemperatureThreshold(nvmlDevice_t dev, int threshold, unsigned *temp) {
    CHECK(dev);
    if (threshold == 0) *temp = (unsigned)GET(dev, "temp_shutdown", 92);
    else if (threshold == 1) *temp = (unsigned)GET(dev, "temp_slowdown", 89);
    else return 3;
    return 0;
}

int nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned *mw) { CHECK(dev); *mw = (unsigned)GET(dev, "power_mw", 70000); return 0; }
int nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t dev, unsigned *mw) { CHECK(dev); *mw = (unsigned)GET(dev, "power_limit_mw", 700000); return 0; }

int nvmlDeviceGetClockInfo(nvmlDevice_t dev, int type, unsigned *mhz) {
    CHECK(dev);
    if (type == 1) *mhz = (unsigned)GET(dev, "clock_sm", 1980);
    else if (type == 2) *mhz = (unsigned)GET(dev, "clock_mem", 2619);
    else if (type == 0) *mhz = (unsigned)GET(dev, "clock_graphics", 1980);
    else return 2;
    return 0;
}

int nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t dev, unsigned long long *reasons) { CHECK(dev); *reasons = GET(dev, "throttle", 0); return 0; }
int nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t dev, unsigned long long *reasons) { CHECK(dev); *reasons = GET(dev, "throttle", 0); return 0; }

int nvmlDeviceGetTotalEccErrors(nvmlDevice_t dev, int error_type, int counter_type, unsigned long long *count) {
    CHECK(dev);
    static const char *names[2][2] = {{"ecc_corr_vol", "ecc_corr_agg"}, {"ecc_unc_vol", "ecc_unc_agg"}};
    if (error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1) return 2;
    *count = GET(dev, names[error_type][counter_type], 0);
    return 0;
}

int nvmlDeviceGetRetiredPages(nvmlDevice_t dev, int cause, unsigned *count, unsigned long long *addresses) {
    CHECK(dev);
    unsigned have = (unsigned)GET(dev, cause == 0 ? "retired_sbe" : "retired_dbe", 0);
    if (!addresses) { *count = have; return have ? 7 : 0; }
    unsigned n = have < *count ? have : *count;
    for (unsigned i = 0; i < n; i++) addresses[i] = 0x1000ULL * (i + 1);
    *count = n;
    return 0;
}

int nvmlDeviceGetRemappedRows(nvmlDevice_t dev, unsigned *corr, unsigned *unc, unsigned *pending, unsigned *failure) {
    CHECK(dev);
    *corr = (unsigned)GET(dev, "remap_corr", 0);
    *unc = (unsigned)GET(dev, "remap_unc", 0);
    *pending = (unsigned)GET(dev, "remap_pending", 0);
    *failure = (unsigned)GET(dev, "remap_failure", 0);
    return 0;
}

int nvmlDeviceGetPcieReplayCounter(nvmlDevice_t dev, unsigned *count) { CHECK(dev); *count = (unsigned)GET(dev, "pcie_replay", 0); return 0; }

int nvmlDeviceGetPcieThroughput(nvmlDevice_t dev, int counter, unsigned *kbs) {
    CHECK(dev);
    *kbs = (unsigned)GET(dev, counter == 0 ? "pcie_tx_kbs" : "pcie_rx_kbs", 0);
    return 0;
}

int nvmlDeviceGetFanSpeed(nvmlDevice_t dev, unsigned *percent) {
    CHECK(dev);
    unsigned long long fan = GET(dev, "fan", 1000);
    if (fan == 1000) return 3; /* data-center boards have no fan */
    *percent = (unsigned)fan;
    return 0;
}

int nvmlDeviceGetPersistenceMode(nvmlDevice_t dev, int *mode) { CHECK(dev); *mode = (int)GET(dev, "persistence", 1); return 0; }

int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned *count, nvmlProcessInfo_t *infos) {
    CHECK(dev);
    pthread_mutex_lock(&lock);
    const char *procs = gpu_str(dev->index, "procs");
    char buffer[1024];
    snprintf(buffer, sizeof buffer, "%s", procs ? procs : "");
    pthread_mutex_unlock(&lock);
    unsigned n = 0;
    nvmlProcessInfo_t parsed[64];
    for (char *item = strtok(buffer, ","); item && n < 64; item = strtok(NULL, ",")) {
        unsigned pid = 0;
        unsigned long long bytes = 0;
        if (sscanf(item, "%u:%llu", &pid, &bytes) == 2) {
            parsed[n].pid = pid;
            parsed[n].usedGpuMemory = bytes;
            parsed[n].gi = parsed[n].ci = 0xFFFFFFFF;
            n++;
        }
    }
    if (!infos) { *count = n; return n ? 7 : 0; }
    if (*count < n) { *count = n; return 7; }
    memcpy(infos, parsed, n * sizeof *infos);
    *count = n;
    return 0;
}

int nvmlDeviceGetNvLinkState(nvmlDevice_t dev, unsigned link, unsigned *active) {
    CHECK(dev);
    unsigned long long links = GET(dev, "nvlinks", 0);
    if (links == 0) return 3;
    if (link >= links) return 2;
    *active = 1;
    return 0;
}

int nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t dev, unsigned link, int counter, unsigned long long *value) {
    CHECK(dev);
    unsigned long long links = GET(dev, "nvlinks", 0);
    if (links == 0) return 3;
    if (link >= links) return 2;
    static const char *names[] = {"nvlink_replay", "nvlink_recovery", "nvlink_crc", "nvlink_crc_data", "nvlink_ecc"};
    if (counter < 0 || counter > 4) return 2;
    *value = GET(dev, names[counter], 0);
    return 0;
}

/* Events: one set at a time is enough for the collector. */
typedef struct { unsigned long long types; } event_set_t;
static event_set_t the_set;

int nvmlEventSetCreate(event_set_t **set) { CHECK(NULL); *set = &the_set; return 0; }
int nvmlDeviceRegisterEvents(nvmlDevice_t dev, unsigned long long types, event_set_t *set) { CHECK(dev); set->types |= types; return 0; }
int nvmlEventSetFree(event_set_t *set) { (void)set; return 0; }

static int next_event(int *gpu, unsigned long long *xid) {
    const char *path = getenv("FAKE_NVML_EVENTS");
    if (!path) return 0;
    struct stat st; /* nothing appended since the last event: no open, no read */
    if (stat(path, &st) != 0 || st.st_size <= events_offset) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int found = 0;
    if (fseek(f, events_offset, SEEK_SET) == 0) {
        char line[128];
        if (fgets(line, sizeof line, f) && strchr(line, '\n')) {
            events_offset = ftell(f);
            found = sscanf(line, "%d %llu", gpu, xid) == 2;
        }
    }
    fclose(f);
    return found;
}

int nvmlEventSetWait_v2(event_set_t *set, nvmlEventData_t *data, unsigned timeout_ms) {
    int rc = fail(NULL, __func__);
    if (rc) return rc;
    /* Real NVML blocks in the driver. Without an events file the fake blocks for the whole
       timeout too; with one it polls the file every 100 ms (each wake-up costs CPU that
       would otherwise count in the sidecar's measured overhead). */
    if (!getenv("FAKE_NVML_EVENTS")) {
        usleep((useconds_t)timeout_ms * 1000);
        return 10; /* NVML_ERROR_TIMEOUT */
    }
    for (unsigned waited = 0;; waited += 100) {
        int gpu;
        unsigned long long xid;
        pthread_mutex_lock(&lock);
        int found = next_event(&gpu, &xid);
        pthread_mutex_unlock(&lock);
        if (found && gpu >= 0 && gpu < MAX_GPUS) {
            memset(data, 0, sizeof *data);
            data->device = &gpus[gpu];
            data->eventType = 0x8; /* nvmlEventTypeXidCriticalError */
            data->eventData = xid;
            return 0;
        }
        if (waited >= timeout_ms) return 10; /* NVML_ERROR_TIMEOUT */
        usleep(100000);
    }
    (void)set;
}
