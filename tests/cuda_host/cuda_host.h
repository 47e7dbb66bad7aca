// CPU execution of fastzsl's CUDA kernels, for tests only (see tests/cuda_host/harness.py).
// Force-included (g++ -include) before the exact kernel text that
// fastzsl/backends/cupy/_loader.py hands to NVRTC.
//
// * __global__/__device__/__forceinline__/__launch_bounds__ become host qualifiers.
// * Each CUDA thread of a block is a fiber on the launching thread (default: fast and
//   deterministic, thread order), or a host thread of a persistent pool in the ASan/TSan
//   builds (so ThreadSanitizer sees races). Blocks run one at a time in grid order, so static __shared__ (a function static) is the block's shared
//   memory, and dynamic shared memory (FASTZSL_DYNAMIC_SHARED) is a fresh heap buffer of
//   exactly the launch's shared_mem bytes per block, filled with 0xff (NaN) so that reads
//   of unwritten shared memory show, and AddressSanitizer sees overruns.
// * __syncthreads() is a barrier over the block's threads that also checks that every
//   thread of a phase waits at the same call site and that no thread of the block has
//   returned (both undefined behaviour on a GPU); with threads, a phase that does not
//   complete within FASTZSL_HOST_BARRIER_SECONDS is reported as a deadlock.
// * Math is <cmath>'s (fmaf/fma are correctly rounded, as on the GPU); no warp intrinsics
//   are provided because the kernels use none (using one fails to compile here), except
//   the tensor-core mma.sync.m16n8k8 TF32 of common.cuh (FASTZSL_HOST_MMA below): every
//   thread of the block deposits its fragments, a barrier, each reads its warp's A, B, C
//   back through the PTX ISA's fragment layout and computes its D elements (exact TF32
//   products, summed in float in k order), a barrier.
#ifndef FASTZSL_CUDA_HOST_H
#define FASTZSL_CUDA_HOST_H

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
// One block runs at a time: every thread of it sees the same buffer, set per block.
#define FASTZSL_DYNAMIC_SHARED(name) static unsigned char* const& name = ::fastzsl_host::g_dynamic_smem
#define __syncthreads() ::fastzsl_host::syncthreads(__FILE__, __LINE__)
#define threadIdx (::fastzsl_host::tl_thread_idx)
#define blockIdx (::fastzsl_host::g_block_idx)
#define blockDim (::fastzsl_host::g_block_dim)
#define gridDim (::fastzsl_host::g_grid_dim)

using std::erf;
using std::exp;
using std::fabs;
using std::fma;
using std::fmaf;
using std::log;
using std::sqrt;

inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
inline double __longlong_as_double(long long x) {
    double f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}

namespace fastzsl_host {

struct Dim3 {
    unsigned int x, y, z;
};

// The launch descriptor the Python side passes (ctypes structure of the same layout).
struct LaunchDesc {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_mem;
};

inline thread_local Dim3 tl_thread_idx{0, 0, 0};
inline Dim3 g_block_idx{0, 0, 0};
inline Dim3 g_block_dim{1, 1, 1};
inline Dim3 g_grid_dim{1, 1, 1};
inline unsigned char* g_dynamic_smem = nullptr;

inline std::mutex g_error_mutex;
inline std::string g_error;

inline void report(const std::string& message) {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    if (g_error.empty()) g_error = message;
}

inline double barrier_seconds() {
    const char* env = std::getenv("FASTZSL_HOST_BARRIER_SECONDS");
    return env ? std::atof(env) : 60.0;
}

// The barrier errors both schedulers (Fibers, BlockBarrier) report.
inline std::string at(const char* file, int line) {
    return std::string(file ? file : "?") + ":" + std::to_string(line);
}
inline void report_barrier_after_exit(const char* file, int line, int exited) {
    report(at(file, line) + ": __syncthreads() after " + std::to_string(exited) +
           " thread(s) of the block returned (undefined behaviour on a GPU)");
}
inline void report_exit_while_waiting(const char* file, int line, int waiting) {
    report(at(file, line) + ": " + std::to_string(waiting) +
           " thread(s) wait at __syncthreads() while a thread of the block returned "
           "(undefined behaviour on a GPU)");
}
inline void report_divergent(const char* file, int line, const char* site_file, int site_line) {
    report(at(file, line) + ": __syncthreads() reached by some threads of a block while "
           "others wait at " + at(site_file, site_line) + " (divergent barrier)");
}

// __syncthreads over the threads of the running block.
class BlockBarrier {
  public:
    void reset(int threads) {
        std::lock_guard<std::mutex> lock(m_);
        expected_ = threads;
        arrived_ = 0;
        exited_ = 0;
        site_file_ = nullptr;
        site_line_ = 0;
    }
    void wait(const char* file, int line) {
        std::unique_lock<std::mutex> lock(m_);
        if (exited_ > 0) report_barrier_after_exit(file, line, exited_);
        if (arrived_ == 0) {
            site_file_ = file;
            site_line_ = line;
        } else if (line != site_line_ || std::strcmp(file, site_file_) != 0) {
            report_divergent(file, line, site_file_, site_line_);
        }
        const unsigned long long gen = generation_;
        if (++arrived_ >= expected_) {
            release();
            return;
        }
        const auto limit = std::chrono::duration<double>(barrier_seconds());
        if (!cv_.wait_for(lock, limit, [&] { return generation_ != gen; })) {
            std::fprintf(stderr,
                         "fastzsl cuda_host: deadlock: %d of %d threads of block (%u,%u,%u) "
                         "waited %.0f s at %s; the others never reached a __syncthreads()\n",
                         arrived_, expected_, g_block_idx.x, g_block_idx.y, g_block_idx.z,
                         limit.count(), at(file, line).c_str());
            std::fflush(stderr);
            std::abort();
        }
    }
    // A thread returned from the kernel: it no longer takes part in barriers.
    void exit_thread() {
        std::lock_guard<std::mutex> lock(m_);
        if (arrived_ > 0) report_exit_while_waiting(site_file_, site_line_, arrived_);
        ++exited_;
        --expected_;
        if (arrived_ > 0 && arrived_ >= expected_) release();
    }

  private:
    void release() {
        arrived_ = 0;
        ++generation_;
        cv_.notify_all();
    }
    std::mutex m_;
    std::condition_variable cv_;
    int expected_ = 0, arrived_ = 0, exited_ = 0;
    unsigned long long generation_ = 0;
    const char* site_file_ = nullptr;
    int site_line_ = 0;
};

inline BlockBarrier g_barrier;

// --- fibers: the threads of a block as coroutines on the launching thread -----------------
//
// The default (fast) mode: each CUDA thread is a ucontext fiber; __syncthreads() switches
// back to the scheduler, which resumes every fiber in thread order until all wait at the
// barrier (then releases them) or have returned. A deterministic schedule: thread 0 runs
// to its barrier before thread 1 starts, so a missing barrier reads unwritten (NaN)
// shared memory. The sanitizer builds use real threads (Pool below), where ThreadSanitizer
// sees the races.
class Fibers {
  public:
    void run_block(int threads, const std::function<void()>& body) {
        while ((int)fibers_.size() < threads) fibers_.push_back(std::make_unique<Fiber>());
        body_ = &body;
        const unsigned bx = g_block_dim.x, by = g_block_dim.y;
        for (int t = 0; t < threads; ++t) {
            Fiber& f = *fibers_[t];
            f.state = READY;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = &scheduler_;
            makecontext(&f.ctx, &Fibers::trampoline, 0);
        }
        int exited = 0;
        while (exited < threads) {
            const char* site_file = nullptr;
            int site_line = 0, waiting = 0;
            for (int t = 0; t < threads; ++t) {
                Fiber& f = *fibers_[t];
                if (f.state == DONE) continue;
                current_ = t;
                tl_thread_idx = Dim3{t % bx, (t / bx) % by, t / (bx * by)};
                f.state = RUNNING;
                swapcontext(&scheduler_, &f.ctx);
                if (f.state == RUNNING) {  // returned from the kernel
                    f.state = DONE;
                    ++exited;
                    if (waiting > 0) report_exit_while_waiting(site_file, site_line, waiting);
                } else {  // WAITING at f.file:f.line
                    if (exited > 0) report_barrier_after_exit(f.file, f.line, exited);
                    if (waiting == 0) {
                        site_file = f.file;
                        site_line = f.line;
                    } else if (f.line != site_line || std::strcmp(f.file, site_file) != 0) {
                        report_divergent(f.file, f.line, site_file, site_line);
                    }
                    ++waiting;
                }
            }
        }
    }

    // Called by a fiber at __syncthreads(): back to the scheduler until released.
    void wait(const char* file, int line) {
        Fiber& f = *fibers_[current_];
        f.state = WAITING;
        f.file = file;
        f.line = line;
        swapcontext(&f.ctx, &scheduler_);
    }

  private:
    enum State { READY, RUNNING, WAITING, DONE };
    struct Fiber {
        ucontext_t ctx;
        std::vector<char> stack = std::vector<char>(256 * 1024);
        State state = READY;
        const char* file = nullptr;
        int line = 0;
    };
    static void trampoline();

    std::vector<std::unique_ptr<Fiber>> fibers_;
    ucontext_t scheduler_;
    const std::function<void()>* body_ = nullptr;
    int current_ = 0;
};

inline Fibers g_fibers;
inline void Fibers::trampoline() { (*g_fibers.body_)(); }

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool USE_THREADS = true;
#else
constexpr bool USE_THREADS = false;
#endif

inline void syncthreads(const char* file, int line) {
    if (USE_THREADS) {
        g_barrier.wait(file, line);
    } else {
        g_fibers.wait(file, line);
    }
}

// A pool of host threads, one per CUDA thread of a block; the launching thread hands them
// one block at a time and waits until all of them have returned from the kernel.
class Pool {
  public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(m_);
            stop_ = true;
        }
        for (auto& w : workers_) {
            {
                std::lock_guard<std::mutex> lock(w->m);
                w->go = true;
            }
            w->cv.notify_one();
        }
        for (auto& w : workers_) w->thread.join();
    }

    void run_block(int threads, const std::function<void()>& body) {
        while ((int)workers_.size() < threads) add_worker();
        g_barrier.reset(threads);
        {
            std::lock_guard<std::mutex> lock(m_);
            body_ = &body;
            pending_ = threads;
        }
        for (int t = 0; t < threads; ++t) {
            Worker& w = *workers_[t];
            {
                std::lock_guard<std::mutex> lock(w.m);
                w.go = true;
            }
            w.cv.notify_one();
        }
        std::unique_lock<std::mutex> lock(m_);
        done_cv_.wait(lock, [&] { return pending_ == 0; });
    }

  private:
    struct Worker {
        std::thread thread;
        std::mutex m;
        std::condition_variable cv;
        bool go = false;
    };

    void add_worker() {
        const int index = (int)workers_.size();
        workers_.push_back(std::make_unique<Worker>());
        Worker* w = workers_.back().get();
        w->thread = std::thread([this, w, index] { loop(*w, index); });
    }

    void loop(Worker& w, int index) {
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(w.m);
                w.cv.wait(lock, [&] { return w.go; });
                w.go = false;
            }
            const std::function<void()>* body;
            {
                std::lock_guard<std::mutex> lock(m_);
                if (stop_) return;
                body = body_;
            }
            const unsigned bx = g_block_dim.x, by = g_block_dim.y;
            tl_thread_idx = Dim3{index % bx, (index / bx) % by, index / (bx * by)};
            (*body)();
            g_barrier.exit_thread();
            std::lock_guard<std::mutex> lock(m_);
            if (--pending_ == 0) done_cv_.notify_one();
        }
    }

    std::vector<std::unique_ptr<Worker>> workers_;
    std::mutex m_;
    std::condition_variable done_cv_;
    const std::function<void()>* body_ = nullptr;
    int pending_ = 0;
    bool stop_ = false;
};

inline std::mutex g_launch_mutex;

inline Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: workers may outlive static destruction
    return *p;
}

// Runs body as every thread of every block of the launch; 0, or 1 with last_error() set.
inline int run_grid(const LaunchDesc& desc, const std::function<void()>& body) {
    std::lock_guard<std::mutex> launch_lock(g_launch_mutex);
    {
        std::lock_guard<std::mutex> lock(g_error_mutex);
        g_error.clear();
    }
    const long long threads = (long long)desc.block[0] * desc.block[1] * desc.block[2];
    if (threads < 1 || threads > 1024 || desc.block[2] > 64 || desc.grid[0] < 1 ||
        desc.grid[1] < 1 || desc.grid[2] < 1 || desc.grid[1] > 65535 || desc.grid[2] > 65535) {
        report("invalid launch configuration (grid " + std::to_string(desc.grid[0]) + "x" +
               std::to_string(desc.grid[1]) + "x" + std::to_string(desc.grid[2]) + ", block " +
               std::to_string(desc.block[0]) + "x" + std::to_string(desc.block[1]) + "x" +
               std::to_string(desc.block[2]) + ")");
        return 1;
    }
    g_block_dim = Dim3{desc.block[0], desc.block[1], desc.block[2]};
    g_grid_dim = Dim3{desc.grid[0], desc.grid[1], desc.grid[2]};
    for (unsigned z = 0; z < desc.grid[2]; ++z) {
        for (unsigned y = 0; y < desc.grid[1]; ++y) {
            for (unsigned x = 0; x < desc.grid[0]; ++x) {
                g_block_idx = Dim3{x, y, z};
                // Exactly the launch's bytes (malloc(0) for none), uninitialised as on a GPU:
                // 0xff bytes read as NaN (float, double) or -1 (integers).
                auto* smem = static_cast<unsigned char*>(std::malloc(desc.shared_mem));
                if (desc.shared_mem) std::memset(smem, 0xff, desc.shared_mem);
                g_dynamic_smem = smem;
                if (USE_THREADS) {
                    pool().run_block((int)threads, body);
                } else {
                    g_fibers.run_block((int)threads, body);
                }
                g_dynamic_smem = nullptr;
                std::free(smem);
                std::lock_guard<std::mutex> lock(g_error_mutex);
                if (!g_error.empty()) {
                    g_error += " [block (" + std::to_string(x) + "," + std::to_string(y) + "," +
                               std::to_string(z) + ")]";
                    return 1;
                }
            }
        }
    }
    return 0;
}

// --- kernel signatures and argument unpacking ---------------------------------------------

template <typename T> struct TypeName;
template <> struct TypeName<float> { static constexpr const char* value = "float32"; };
template <> struct TypeName<double> { static constexpr const char* value = "float64"; };
template <> struct TypeName<int> { static constexpr const char* value = "int32"; };
template <> struct TypeName<unsigned int> { static constexpr const char* value = "uint32"; };
template <> struct TypeName<long long> { static constexpr const char* value = "int64"; };
template <> struct TypeName<unsigned long long> { static constexpr const char* value = "uint64"; };
template <> struct TypeName<bool> { static constexpr const char* value = "bool"; };
template <> struct TypeName<unsigned char> { static constexpr const char* value = "uint8"; };

// "float32*" for a pointer to (const) float, "int32" for an int, ...
template <typename A>
std::string type_name() {
    using D = std::decay_t<A>;
    if constexpr (std::is_pointer_v<D>) {
        return std::string(TypeName<std::remove_cv_t<std::remove_pointer_t<D>>>::value) + "*";
    } else {
        return TypeName<std::remove_cv_t<D>>::value;
    }
}

template <typename... A>
std::string signature(void (*)(A...)) {
    std::string out;
    ((out += (out.empty() ? "" : ",") + type_name<A>()), ...);
    return out;
}

template <typename... A, std::size_t... I>
void call(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<std::decay_t<A>*>(args[I])...);
}

// args[i] points to a value of the kernel's i-th parameter type (as for cuLaunchKernel).
template <typename... A>
int launch(void (*fn)(A...), const LaunchDesc& desc, void** args) {
    // Each thread reads its own copy of the arguments, as kernel parameters are.
    const std::function<void()> body = [fn, args] {
        call(fn, args, std::index_sequence_for<A...>{});
    };
    return run_grid(desc, body);
}

}  // namespace fastzsl_host

// --- tensor cores: cvt.rna.tf32.f32 and mma.sync.m16n8k8 TF32 (see the top) -------------
#define FASTZSL_HOST_MMA 1

// x rounded to TF32 (10 mantissa bits), ties away from zero, as a .b32 (low 13 bits 0).
inline unsigned to_tf32(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN: as they are
    return (u + 0x1000u) & 0xffffe000u;              // magnitude bits: rounds half away
}

namespace fastzsl_host {
struct MmaFragments {
    unsigned a[4], b[2];
    float c[4];
};
inline MmaFragments g_mma[1024];  // one per thread of the running block

inline float mma_a(int warp, int m, int k) {  // A[m][k] of a warp's fragments
    const MmaFragments& f = g_mma[warp * 32 + (m % 8) * 4 + k % 4];
    return __uint_as_float(f.a[(m >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]);
}
inline float mma_b(int warp, int k, int n) {  // B[k][n]
    return __uint_as_float(g_mma[warp * 32 + n * 4 + k % 4].b[k >= 4 ? 1 : 0]);
}
}  // namespace fastzsl_host

inline void mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    using namespace fastzsl_host;
    const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    if ((blockDim.x * blockDim.y * blockDim.z) % 32 != 0) {
        report("mma.sync in a block that is not whole warps");
    }
    MmaFragments& mine = g_mma[tid];
    for (int i = 0; i < 4; ++i) mine.a[i] = a[i], mine.c[i] = d[i];
    mine.b[0] = b[0];
    mine.b[1] = b[1];
    __syncthreads();  // every lane's fragments are in place
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int m = g + (i >= 2 ? 8 : 0), n = 2 * t + (i & 1);
        float acc = mine.c[i];
        for (int k = 0; k < 8; ++k) acc += mma_a(warp, m, k) * mma_b(warp, k, n);
        out[i] = acc;
    }
    __syncthreads();  // every lane has read its warp's fragments before they change
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// The entry points the harness looks up with ctypes, for each kernel NAME.
#define FASTZSL_HOST_EXPORT(NAME)                                                            \
    extern "C" __attribute__((visibility("default"))) int fastzsl_host_launch_##NAME(        \
        const ::fastzsl_host::LaunchDesc* desc, void** args) {                              \
        return ::fastzsl_host::launch(&NAME, *desc, args);                                   \
    }                                                                                        \
    extern "C" __attribute__((visibility("default"))) const char*                            \
    fastzsl_host_signature_##NAME() {                                                        \
        static const std::string sig = ::fastzsl_host::signature(&NAME);                     \
        return sig.c_str();                                                                  \
    }

extern "C" __attribute__((visibility("default"))) const char* fastzsl_host_last_error() {
    std::lock_guard<std::mutex> lock(::fastzsl_host::g_error_mutex);
    static thread_local std::string copy;
    copy = ::fastzsl_host::g_error;
    return copy.c_str();
}

#endif  // FASTZSL_CUDA_HOST_H
