// Builds the page dg-locust's web UI serves: dg_locust/web_assets/index.html (a Jinja template, as Locust's own)
// and dg_locust/web_assets/dg/assets/dg-webui.js (one bundle, no hash, so a rebuild replaces one file).
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: '../dg_locust/web_assets',
    emptyOutDir: true,
    assetsDir: 'dg/assets',
    chunkSizeWarningLimit: 2000,
    sourcemap: false,
    rollupOptions: {
      output: {
        entryFileNames: 'dg/assets/dg-webui.js',
        chunkFileNames: 'dg/assets/[name].js',
        assetFileNames: 'dg/assets/[name][extname]',
      },
    },
  },
});
