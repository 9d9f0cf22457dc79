import { defineConfig } from "vite";

// The built UI is served by tsunagu-server at `/`, so every asset path is
// relative to the site root and API calls go to the same origin (the session
// cookie is SameSite=Strict and passkeys are bound to that origin).
// `npm run dev` proxies the API to a local server (TSUNAGU_DEV_SERVER).
const devServer = process.env.TSUNAGU_DEV_SERVER ?? "http://localhost:8080";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    target: "es2020",
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  server: {
    proxy: {
      "/v1": { target: devServer, ws: true, changeOrigin: false },
    },
  },
});
